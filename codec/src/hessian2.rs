//! Being written: hessian2
