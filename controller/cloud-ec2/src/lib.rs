//! EC2 backend (being written).
