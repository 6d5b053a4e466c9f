//! # vbm-server — the service
//!
//! `vbm serve`: the state database (SQLite, WAL, embedded migrations), vCenter connections with
//! encrypted credentials, jobs and schedules, the job runner, retention after each backup, the
//! REST API under `/api/v1` with its OpenAPI document, authentication, and Prometheus metrics.
//!
//! It must not know how a VM is backed up (that is `vbm-engine`) nor parse vSphere or repository
//! formats itself; nothing below it depends on it.
