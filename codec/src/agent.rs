//! Being written: agent
