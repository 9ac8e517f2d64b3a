//! storageclass-migrate: lets `helm upgrade` change a PersistentVolumeClaim's storage class.
//!
//! [`decision`] decides, from what the API returned, what to do with a claim. [`migrate`] reads
//! and plans a claim, runs its pre-flight and commits it through [`execute`], whose steps live in
//! [`claim`], [`eviction`] and [`volume`]; [`api`] bounds and retries each request; [`run`]
//! drives every claim of a run within its deadline; [`statefulset`] moves a StatefulSet's
//! volumeClaimTemplate and its claims. [`copy`] is the `copy` subcommand, which
//! copies a volume's data into another.

pub mod api;
pub mod claim;
pub mod class;
pub mod client;
pub mod config;
pub mod copy;
pub mod decision;
pub mod error;
pub mod eviction;
pub mod execute;
pub mod keep;
pub mod migrate;
pub mod run;
pub mod statefulset;
pub mod summary;
pub mod telemetry;
pub mod validate;
pub mod volume;
pub mod volume_snapshot;
pub mod wait;

pub use config::{Args, Config};
pub use error::{Error, ExitStatus};
