//! Generated gRPC types and stubs for package `understudy.v1`.
//!
//! The contract itself lives in `understudy.proto` beside this crate; `build.rs`
//! compiles it with protox (pure Rust), so building needs no system `protoc`.

#![allow(clippy::large_enum_variant)]

pub mod codec;

/// Messages and services of `understudy.v1`.
pub mod v1 {
    tonic::include_proto!("understudy.v1");
}

pub use v1::*;
