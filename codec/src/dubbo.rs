//! Being written: dubbo
