//! Being written: form
