//! The paths files get in the manifest (and in a restore to a directory): the datastore layout,
//! `<vm dir>/<file>`, made safe and unique.

use std::collections::HashSet;

use vbm_vsphere::DatastorePath;

/// Hands out unique, safe relative paths for datastore files.
#[derive(Debug, Default)]
pub(super) struct PathAllocator {
    used: HashSet<String>,
}

impl PathAllocator {
    /// `dir/file` of `[ds] dir/file`; if that is taken (same directory name on two datastores),
    /// `ds/dir/file`, then numbered variants.
    pub(super) fn allocate(&mut self, path: &DatastorePath) -> String {
        let relative = sanitize(&path.path);
        let mut candidate = relative.clone();
        if self.used.contains(&candidate) {
            candidate = format!("{}/{relative}", sanitize_component(&path.datastore));
        }
        let mut n = 2;
        while self.used.contains(&candidate) {
            candidate = format!("{}-{n}/{relative}", sanitize_component(&path.datastore));
            n += 1;
        }
        self.used.insert(candidate.clone());
        candidate
    }
}

/// Makes a datastore-relative path safe as a relative path on any file system: no empty, `.` or
/// `..` components, no backslashes or control characters.
fn sanitize(path: &str) -> String {
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(sanitize_component)
        .collect();
    if parts.is_empty() {
        "_".to_owned()
    } else {
        parts.join("/")
    }
}

fn sanitize_component(component: &str) -> String {
    let clean: String = component
        .chars()
        .map(|c| if c == '\\' || c.is_control() { '_' } else { c })
        .collect();
    match clean.as_str() {
        "" | "." | ".." => "_".to_owned(),
        _ => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_path_on_two_datastores_gets_a_datastore_prefix() {
        let mut paths = PathAllocator::default();
        assert_eq!(
            paths.allocate(&DatastorePath::new("ds1", "web01/web01.vmdk")),
            "web01/web01.vmdk"
        );
        assert_eq!(
            paths.allocate(&DatastorePath::new("ds 2", "web01/web01.vmdk")),
            "ds 2/web01/web01.vmdk"
        );
        assert_eq!(
            paths.allocate(&DatastorePath::new("ds 2", "web01/web01.vmdk")),
            "ds 2-2/web01/web01.vmdk"
        );
    }

    #[test]
    fn hostile_names_stay_inside_the_target() {
        let mut paths = PathAllocator::default();
        assert_eq!(
            paths.allocate(&DatastorePath::new("ds", "../../etc/passwd")),
            "_/_/etc/passwd"
        );
        assert_eq!(
            paths.allocate(&DatastorePath::new("ds", "a\\b/c\u{1b}d")),
            "a_b/c_d"
        );
        assert_eq!(paths.allocate(&DatastorePath::new("ds", "")), "_");
    }
}
