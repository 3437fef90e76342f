//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod engine;
pub use carflow_testkit::kafka;
pub mod proxy;
pub mod services;
pub mod setup;
pub mod verify;
