//! GGUF metadata values and typed access to them.
//!
//! Reference: ggml `docs/gguf.md`, "gguf_metadata_value_type". Arrays are stored as `Vec<Value>`
//! (the element type is implied by the items; an empty array has no type to recover, and no
//! reader needs it). Typed getters are lenient where the spec leaves writers a choice: an integer
//! getter accepts any integer type whose value fits (converters disagree on u32 vs i32 vs u64),
//! a float getter accepts f32 or f64. Anything else is `Error::WrongType` naming the key.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// The on-disk value type tag (`gguf_metadata_value_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type can take on disk; used to reject absurd array
    /// counts before allocating.
    pub(crate) fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// The value as an i128 if it is any integer type (lossless for all of them).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as f64 if it is f32 or f64.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Typed getters over a metadata map; `GgufFile` forwards to these.
pub(crate) struct Getters<'a>(pub &'a BTreeMap<String, Value>);

fn wrong(key: &str, expected: &'static str, found: &Value) -> Error {
    Error::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_name(),
    }
}

impl<'a> Getters<'a> {
    pub fn get(&self, key: &str) -> Result<&'a Value> {
        self.0.get(key).ok_or_else(|| Error::MissingKey {
            key: key.to_string(),
        })
    }

    fn int<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.get(key)?;
        v.as_integer()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| wrong(key, expected, v))
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        self.int(key, "integer fitting u32")
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.int(key, "integer fitting u64")
    }

    pub fn i64(&self, key: &str) -> Result<i64> {
        self.int(key, "integer fitting i64")
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        let v = self.get(key)?;
        v.as_float()
            .map(|f| f as f32)
            .ok_or_else(|| wrong(key, "f32 or f64", v))
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(wrong(key, "bool", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| wrong(key, "string", v))
    }

    fn array(&self, key: &str, expected: &'static str) -> Result<&'a [Value]> {
        let v = self.get(key)?;
        v.as_array().ok_or_else(|| wrong(key, expected, v))
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<&'a str>> {
        const EXPECTED: &str = "array of strings";
        self.array(key, EXPECTED)?
            .iter()
            .map(|item| item.as_str().ok_or_else(|| wrong(key, EXPECTED, item)))
            .collect()
    }

    pub fn i32_array(&self, key: &str) -> Result<Vec<i32>> {
        const EXPECTED: &str = "array of integers fitting i32";
        self.array(key, EXPECTED)?
            .iter()
            .map(|item| {
                item.as_integer()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| wrong(key, EXPECTED, item))
            })
            .collect()
    }

    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>> {
        const EXPECTED: &str = "array of floats";
        self.array(key, EXPECTED)?
            .iter()
            .map(|item| {
                item.as_float()
                    .map(|f| f as f32)
                    .ok_or_else(|| wrong(key, EXPECTED, item))
            })
            .collect()
    }
}
