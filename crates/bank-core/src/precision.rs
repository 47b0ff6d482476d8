//! Storage precision of the bank rows.

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;

/// How bank rows are stored on the device. Arithmetic (similarities, updates) is always f32.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The backend's float type, 4 bytes per value on every shipped backend (the default).
    #[default]
    F32,
    /// 2 bytes per value: half the memory of a million-row bank, ~3 significant digits per value.
    F16,
}

impl Precision {
    /// The burn dtype rows are stored in.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }

    /// Bytes per stored value.
    pub fn bytes_per_value(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    /// Stable lower-case name, used in files and configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(crate::Error::InvalidValue {
                field: "precision",
                value: other.to_string(),
                reason: "expected `f32` or `f16`",
            }),
        }
    }
}
