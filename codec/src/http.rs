//! Being written: http
