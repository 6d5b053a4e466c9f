//! Failpoints (FAULT-MATRIX H1): named places at durability boundaries where a test can make the
//! process die as abruptly as `kill -9`, deterministically.
//!
//! Configured only through the environment, read once: `VBM_FAILPOINTS="name=abort;other=abort"`.
//! Without the variable every failpoint is a no-op (one atomic load after the first call).
//! Names follow FAULT-MATRIX D0, e.g. `manifest.after_write_before_db_commit`.

use std::collections::HashSet;
use std::sync::OnceLock;

/// The environment variable naming the active failpoints.
pub const ENV: &str = "VBM_FAILPOINTS";

fn active() -> &'static HashSet<String> {
    static ACTIVE: OnceLock<HashSet<String>> = OnceLock::new();
    ACTIVE.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

fn parse(spec: &str) -> HashSet<String> {
    spec.split([';', ','])
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            (action.trim() == "abort").then(|| name.trim().to_owned())
        })
        .collect()
}

/// Aborts the process here if the failpoint `name` is active.
pub fn hit(name: &str) {
    if active().contains(name) {
        tracing::error!(failpoint = name, "failpoint hit: aborting the process");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_abort_actions_are_recognised() {
        let set = parse("a.b=abort; c=sleep(5),d = abort");
        assert!(set.contains("a.b"));
        assert!(set.contains("d"));
        assert!(!set.contains("c"));
        assert!(parse("").is_empty());
    }
}
