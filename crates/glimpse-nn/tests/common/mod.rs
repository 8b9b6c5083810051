//! Shared by the reference-parity tests of this crate.
#![allow(dead_code)]

mod device;

pub use device::{test_device, tol};
