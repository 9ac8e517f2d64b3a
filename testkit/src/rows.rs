//! Table-driven tests: every row runs on a thread and runtime of its own, all at once, and each
//! is checked on its own; the test fails naming every row that failed.

use std::thread;

/// Runs `test(row)` for every row in parallel and fails, naming the rows, if any failed. `name`
/// names a row in the messages.
pub fn check_rows<T, Fut>(rows: Vec<T>, name: fn(&T) -> String, test: fn(T) -> Fut)
where
    T: Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let handles: Vec<(String, thread::JoinHandle<()>)> = rows
        .into_iter()
        .map(|row| {
            let row_name = name(&row);
            let handle = thread::Builder::new()
                .name(row_name.clone())
                // A test's future lives on its thread's stack, as with #[tokio::test].
                .stack_size(16 << 20)
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(test(row));
                })
                .expect("spawning a row's thread");
            (row_name, handle)
        })
        .collect();
    let failed: Vec<String> = handles
        .into_iter()
        .filter_map(|(row, handle)| {
            handle.join().err().map(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("row {row}: {message}")
            })
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} row(s) failed:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_rows_are_named() {
        let result = std::panic::catch_unwind(|| {
            check_rows(
                vec![1, 2, 3],
                |n| format!("n={n}"),
                |n| async move {
                    assert!(n != 2, "two is wrong");
                },
            )
        });
        let message = result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.starts_with("1 row(s) failed"), "{message}");
        assert!(message.contains("row n=2: two is wrong"), "{message}");
        assert!(
            !message.contains("n=1") && !message.contains("n=3"),
            "{message}"
        );
    }

    #[test]
    fn passing_rows_pass() {
        check_rows(vec!["a", "b"], |s| s.to_string(), |_| async {});
    }
}
