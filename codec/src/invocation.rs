//! A typed invocation sent as JSON: service, method, parameter types and arguments.
//!
//! ```json
//! {"interface": "com.example.Hello", "method": "hash",
//!  "parameterTypes": ["java.lang.String"], "arguments": ["abc"],
//!  "version": "1.0.0", "group": "g", "attachments": {"k": "v"}, "timeout": 500}
//! ```
//!
//! Only `interface` and `method` are required. `parameterTypes` may be omitted when
//! `arguments` is empty or omitted; otherwise both must have the same length. Unknown
//! fields are ignored. Every error names the offending field, so callers can answer
//! `400` with [`InvocationError`]'s text as the body.
//!
//! # Examples
//!
//! ```
//! use codec::invocation::Invocation;
//!
//! let inv = Invocation::from_json(br#"{"interface":"a.B","method":"m",
//!     "parameterTypes":["int"],"arguments":[1],"timeout":50}"#).unwrap();
//! assert_eq!((inv.interface.as_str(), inv.method.as_str()), ("a.B", "m"));
//! assert_eq!(inv.timeout_ms, Some(50));
//!
//! let err = Invocation::from_json(br#"{"interface":"a.B","method":"m","arguments":[1]}"#);
//! assert_eq!(err.unwrap_err().to_string(),
//!            "`parameterTypes` is required when `arguments` is not empty");
//! ```

use std::fmt;

use serde_json::{Map, Value};

/// A decoded JSON invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The service (interface) name.
    pub interface: String,
    /// The method name.
    pub method: String,
    /// Java type names of the parameters, one per argument.
    pub parameter_types: Vec<String>,
    /// The arguments, as JSON values, in order.
    pub arguments: Vec<Value>,
    /// The service version, if given.
    pub version: Option<String>,
    /// The service group, if given.
    pub group: Option<String>,
    /// String attachments, in the order sent.
    pub attachments: Vec<(String, String)>,
    /// The call timeout in milliseconds, if given.
    pub timeout_ms: Option<u64>,
}

/// Why a JSON invocation was rejected.
#[derive(Debug)]
pub enum InvocationError {
    /// The body is not valid JSON.
    Json(serde_json::Error),
    /// The top-level value is not an object.
    NotAnObject,
    /// A required field is absent (or null).
    Missing(&'static str),
    /// A field has the wrong JSON type.
    WrongType {
        /// The field (`attachments.<key>` style for nested values).
        field: String,
        /// What was expected, e.g. "a string".
        expected: &'static str,
    },
    /// `parameterTypes` omitted although there are arguments.
    TypesRequired,
    /// `parameterTypes` and `arguments` differ in length.
    Arity {
        /// Number of parameter types.
        types: usize,
        /// Number of arguments.
        arguments: usize,
    },
    /// An argument is nested deeper than the limit (see [`Invocation::check_depth`]).
    TooDeep {
        /// Index of the first argument over the limit.
        argument: usize,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for InvocationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvocationError::Json(e) => write!(f, "invalid JSON: {e}"),
            InvocationError::NotAnObject => f.write_str("the invocation must be a JSON object"),
            InvocationError::Missing(field) => write!(f, "missing field `{field}`"),
            InvocationError::WrongType { field, expected } => {
                write!(f, "field `{field}` must be {expected}")
            }
            InvocationError::TypesRequired => {
                f.write_str("`parameterTypes` is required when `arguments` is not empty")
            }
            InvocationError::Arity { types, arguments } => write!(
                f,
                "`parameterTypes` has {types} entries but `arguments` has {arguments}"
            ),
            InvocationError::TooDeep { argument, limit } => write!(
                f,
                "`arguments[{argument}]` is nested more than {limit} levels deep"
            ),
        }
    }
}

impl std::error::Error for InvocationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InvocationError::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for InvocationError {
    fn from(e: serde_json::Error) -> Self {
        InvocationError::Json(e)
    }
}

impl Invocation {
    /// Parse an invocation from a JSON body.
    ///
    /// # Errors
    ///
    /// See [`InvocationError`]; each message names the field at fault.
    pub fn from_json(body: &[u8]) -> Result<Self, InvocationError> {
        match serde_json::from_slice(body)? {
            Value::Object(map) => Self::from_map(map),
            _ => Err(InvocationError::NotAnObject),
        }
    }

    /// Build an invocation from an already parsed JSON object.
    ///
    /// # Errors
    ///
    /// See [`InvocationError`].
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, InvocationError> {
        let interface = required_string(&mut map, "interface")?;
        let method = required_string(&mut map, "method")?;
        let arguments = match take(&mut map, "arguments") {
            None => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(wrong("arguments", "an array")),
        };
        let parameter_types = match take(&mut map, "parameterTypes") {
            None if arguments.is_empty() => Vec::new(),
            None => return Err(InvocationError::TypesRequired),
            Some(Value::Array(types)) => types
                .into_iter()
                .enumerate()
                .map(|(i, t)| match t {
                    Value::String(s) if !s.is_empty() => Ok(s),
                    _ => Err(InvocationError::WrongType {
                        field: format!("parameterTypes[{i}]"),
                        expected: "a non-empty string",
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(wrong("parameterTypes", "an array of strings")),
        };
        if parameter_types.len() != arguments.len() {
            return Err(InvocationError::Arity {
                types: parameter_types.len(),
                arguments: arguments.len(),
            });
        }
        let version = optional_string(&mut map, "version")?;
        let group = optional_string(&mut map, "group")?;
        let attachments = match take(&mut map, "attachments") {
            None => Vec::new(),
            Some(Value::Object(att)) => att
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(InvocationError::WrongType {
                        field: format!("attachments.{k}"),
                        expected: "a string",
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(wrong("attachments", "an object of strings")),
        };
        let timeout_ms = match take(&mut map, "timeout") {
            None => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .ok_or_else(|| wrong("timeout", "a non-negative integer (milliseconds)"))?,
            ),
            Some(_) => return Err(wrong("timeout", "a non-negative integer (milliseconds)")),
        };
        Ok(Invocation {
            interface,
            method,
            parameter_types,
            arguments,
            version,
            group,
            attachments,
            timeout_ms,
        })
    }
}

impl Invocation {
    /// Refuse arguments nested more than `limit` levels deep. A value counts as one
    /// level, each array or object around it as one more: `7` and `[]` are 1 deep,
    /// `[7]` 2, `{"a":[7]}` 3 — as hessian2 counts nesting ([`crate::hessian2::MAX_DEPTH`]
    /// levels are what its decoder reads back). Walks without recursion and stops at the
    /// first value past the limit.
    ///
    /// # Errors
    ///
    /// [`InvocationError::TooDeep`] naming the first argument over the limit.
    pub fn check_depth(&self, limit: usize) -> Result<(), InvocationError> {
        let mut stack: Vec<(&Value, usize)> = Vec::new();
        for (argument, value) in self.arguments.iter().enumerate() {
            stack.clear();
            stack.push((value, 1));
            while let Some((v, depth)) = stack.pop() {
                if depth > limit {
                    return Err(InvocationError::TooDeep { argument, limit });
                }
                match v {
                    Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
                    Value::Object(fields) => stack.extend(fields.values().map(|i| (i, depth + 1))),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Remove a field, treating `null` as absent.
fn take(map: &mut Map<String, Value>, field: &str) -> Option<Value> {
    match map.shift_remove(field) {
        None | Some(Value::Null) => None,
        v => v,
    }
}

fn wrong(field: &str, expected: &'static str) -> InvocationError {
    InvocationError::WrongType {
        field: field.to_owned(),
        expected,
    }
}

fn required_string(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, InvocationError> {
    match take(map, field) {
        None => Err(InvocationError::Missing(field)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(wrong(field, "a non-empty string")),
    }
}

fn optional_string(
    map: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, InvocationError> {
    match take(map, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong(field, "a string")),
    }
}
