//! Test support shared by carflow's end-to-end tests (`tests/`) and the API's tests
//! (`api/tests/`), as a crate of its own instead of files included by path.

pub mod data;
pub mod kafka;
