//! Byte counts from Kubernetes quantities ("16Gi", "1.5G", "512Mi", "1e9").
//!
//! The API server already refused anything `isQuantity` rejects; this parser
//! still returns an error rather than panicking, because the controller must
//! survive any object, including ones stored before a schema change.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not a whole number of bytes such as 512Mi, 16Gi or 1G (no milli `m` suffix, at most 1Pi)")]
pub struct BadQuantity(pub String);

/// The largest byte quantity admission accepts (`api::schema::MAX_BYTES`).
pub const MAX_BYTES: f64 = (1u64 << 50) as f64;

/// The quantity in bytes. A fraction of a byte (`512m` is 0.512 bytes, a
/// common slip for 512M) is refused, not rounded into a one-byte /dev/shm.
pub fn bytes(q: &str) -> Result<u64, BadQuantity> {
    let bad = || BadQuantity(q.to_string());
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad())?;
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    let total = value * multiplier;
    if !total.is_finite() || total < 0.0 || total.fract() != 0.0 || total > MAX_BYTES {
        return Err(bad());
    }
    Ok(total as u64)
}

/// A byte count as the largest binary unit that divides it (`16Gi`), or
/// plain bytes.
pub fn format_bytes(n: u64) -> String {
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        assert_eq!(bytes("16Gi"), Ok(16 << 30));
        assert_eq!(bytes("512Mi"), Ok(512 << 20));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(bytes("1e3"), Ok(1000));
        assert_eq!(bytes("100"), Ok(100));
        assert_eq!(bytes("2000m"), Ok(2));
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        assert!(bytes("14Gx").is_err());
        assert!(bytes("lots").is_err());
        assert!(bytes("").is_err());
        assert!(bytes("-1Gi").is_err());
        // Milli-bytes: 0.512 bytes is a slip for 512M, never a /dev/shm size.
        assert!(bytes("512m").is_err());
        assert!(bytes("1500m").is_err());
        assert!(bytes("1e400").is_err());
        assert!(bytes("100Ei").is_err());
        assert_eq!(bytes("1Pi"), Ok(1 << 50));
        assert!(bytes("1025Ti").is_err());
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_bytes(16 << 30), "16Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
