//! Being written: invocation
