//! Being written: java
