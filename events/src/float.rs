//! A JSON encoding of `f64` that keeps every value the state can hold.
//!
//! `serde_json` writes NaN and ±infinity as `null` and then refuses to read
//! `null` back as a number, so one non-finite sum in a checkpoint would stop
//! the next start. Fields that use this module (`#[serde(with =
//! "lambda_events::float")]`) write finite values as numbers and the others
//! as the strings `"NaN"`, `"inf"` and `"-inf"`; reading also accepts `null`
//! (what older checkpoints hold) as NaN.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// Writes `value`: a number when finite, otherwise `"NaN"`, `"inf"` or `"-inf"`.
pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else if value.is_nan() {
        serializer.serialize_str("NaN")
    } else if *value > 0.0 {
        serializer.serialize_str("inf")
    } else {
        serializer.serialize_str("-inf")
    }
}

/// Reads what [`serialize`] writes (and `null` as NaN).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(FloatVisitor)
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }

    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Holder(#[serde(with = "super")] f64);

    #[test]
    fn every_float_round_trips() {
        for value in [
            0.0,
            -0.0,
            1.5,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let text = serde_json::to_string(&Holder(value)).unwrap();
            let back: Holder = serde_json::from_str(&text).unwrap();
            assert_eq!(back.0.to_bits(), value.to_bits(), "{value} as {text}");
        }
        let nan: Holder =
            serde_json::from_str(&serde_json::to_string(&Holder(f64::NAN)).unwrap()).unwrap();
        assert!(nan.0.is_nan());
    }

    #[test]
    fn null_from_older_files_reads_as_nan_and_junk_is_an_error() {
        assert!(serde_json::from_str::<Holder>("null").unwrap().0.is_nan());
        let err = serde_json::from_str::<Holder>("\"lots\"").unwrap_err();
        assert!(err.to_string().contains("\"inf\""), "{err}");
    }
}
