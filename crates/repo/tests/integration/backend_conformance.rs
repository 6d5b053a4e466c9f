//! One conformance suite for every storage backend: the contract documented on
//! `vbm_repo::Backend`, run against the local backend on the real file system and on CrashFs.

use std::sync::Arc;

use jiff::Timestamp;
use vbm_repo::Error;
use vbm_repo::backend::{
    Backend, ConditionalDelete, CrashFs, ListEntry, LocalBackend, ObjectPath, PutMode,
};

fn p(s: &str) -> ObjectPath {
    ObjectPath::new(s).unwrap()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn conformance(b: &dyn Backend) {
    // put / get / get_range / stat
    b.put(&p("a/b/one"), b"hello world", PutMode::Overwrite)
        .unwrap();
    assert_eq!(b.get(&p("a/b/one")).unwrap(), b"hello world");
    assert_eq!(b.get_range(&p("a/b/one"), 6, 100).unwrap(), b"world");
    let meta = b.stat(&p("a/b/one")).unwrap().unwrap();
    assert_eq!(meta.size, 11);
    assert!(b.stat(&p("a/b/none")).unwrap().is_none());
    assert!(matches!(b.get(&p("a/b/none")), Err(Error::NotFound { .. })));
    // Overwrite replaces whole; create-new refuses an existing object.
    b.put(&p("a/b/one"), b"2", PutMode::Overwrite).unwrap();
    assert_eq!(b.get(&p("a/b/one")).unwrap(), b"2");
    assert!(matches!(
        b.put(&p("a/b/one"), b"3", PutMode::CreateNew),
        Err(Error::AlreadyExists { .. })
    ));
    b.put(&p("a/c/two"), b"x", PutMode::CreateNew).unwrap();
    // touch sets the time exactly (our clock, not the store's).
    let t = ts("2030-01-02T03:04:05Z");
    b.touch(&p("a/c/two"), t).unwrap();
    assert_eq!(b.stat(&p("a/c/two")).unwrap().unwrap().modified, t);
    assert!(matches!(
        b.touch(&p("a/c/none"), t),
        Err(Error::NotFound { .. })
    ));
    // list: recursive is complete; non-recursive shows prefixes; a missing prefix is empty.
    let mut all = Vec::new();
    b.list(&p("a"), true, &mut |e| {
        if let ListEntry::Object { path, .. } = e {
            all.push(path.to_string());
        }
        Ok(())
    })
    .unwrap();
    all.sort();
    assert_eq!(all, vec!["a/b/one", "a/c/two"]);
    let mut top = Vec::new();
    b.list(&p("a"), false, &mut |e| {
        top.push(e);
        Ok(())
    })
    .unwrap();
    assert_eq!(top.len(), 2);
    assert!(top.iter().all(|e| matches!(e, ListEntry::Prefix(_))));
    b.list(&p("zzz"), true, &mut |_| panic!("nothing to list"))
        .unwrap();
    // A visitor error stops the listing and is returned.
    let err = b
        .list(&p("a"), true, &mut |_| Err(Error::Cancelled))
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled));
    // delete_if_older honours the cutoff and touches.
    let old = ts("2020-01-01T00:00:00Z");
    b.touch(&p("a/c/two"), old).unwrap();
    assert!(matches!(
        b.delete_if_older(&p("a/c/two"), old).unwrap(),
        ConditionalDelete::Kept { .. }
    ));
    assert_eq!(
        b.delete_if_older(&p("a/c/two"), ts("2021-01-01T00:00:00Z"))
            .unwrap(),
        ConditionalDelete::Deleted { size: 1 }
    );
    assert_eq!(
        b.delete_if_older(&p("a/c/two"), t).unwrap(),
        ConditionalDelete::Missing
    );
    // delete is idempotent; delete_prefix removes everything below.
    b.delete(&p("a/b/one")).unwrap();
    b.delete(&p("a/b/one")).unwrap();
    b.put(&p("a/d/x/y"), b"1", PutMode::Overwrite).unwrap();
    b.put(&p("a/d/z"), b"1", PutMode::Overwrite).unwrap();
    b.delete_prefix(&p("a/d")).unwrap();
    b.delete_prefix(&p("a/d")).unwrap();
    let mut left = 0;
    b.list(&p("a"), true, &mut |_| {
        left += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn local_backend_on_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::new(dir.path().join("root"));
    b.create_root().unwrap();
    conformance(&b);
}

#[test]
fn local_backend_on_crashfs() {
    let b = LocalBackend::with_fs(CrashFs::new());
    b.create_root().unwrap();
    conformance(&b);
    let shared: Arc<dyn Backend> = Arc::new(b);
    assert!(shared.location().starts_with("crashfs"));
}
