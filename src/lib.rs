//! storageclass-migrate: lets `helm upgrade` change a PersistentVolumeClaim's storage class.
//!
//! [`decision`] decides, from what the API returned, what to do with a claim; [`migrate`] reads
//! and acts through the API; [`run`] drives every claim of a run.

pub mod api;
pub mod class;
pub mod client;
pub mod config;
pub mod decision;
pub mod error;
pub mod migrate;
pub mod run;
pub mod summary;
pub mod telemetry;
pub mod validate;
pub mod wait;

pub use config::{Args, Config};
pub use error::{Error, ExitStatus};
