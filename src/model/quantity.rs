//! Kubernetes resource quantities ("64Mi", "1.5G", "1e3") as byte counts, for PV capacity,
//! claim requests and emptyDir size limits.

/// Why a quantity string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("quantity {text:?} is not a valid Kubernetes quantity (e.g. 10Gi, 500M, 1e9): {why}")]
pub struct QuantityError {
    pub text: String,
    pub why: &'static str,
}

/// Parses a quantity and rounds it up to whole bytes.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let fail = |why| QuantityError {
        text: text.to_string(),
        why,
    };
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(number_end);
    if number.starts_with('-') {
        return Err(fail("negative quantities have no meaning here"));
    }
    let number = number.strip_prefix('+').unwrap_or(number);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(fail("it has no digits"));
    }
    let digits = format!("{int_part}{frac_part}");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 30 {
        return Err(fail("its number is malformed"));
    }
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| fail("its number is malformed"))?;
    let (numerator, mut denominator) = scale(suffix).ok_or_else(|| fail("unknown suffix"))?;
    denominator = denominator
        .checked_mul(10u128.pow(frac_part.len() as u32))
        .ok_or_else(|| fail("too many decimal places"))?;
    let value = mantissa
        .checked_mul(numerator)
        .ok_or_else(|| fail("it is too large"))?
        .div_ceil(denominator);
    u64::try_from(value).map_err(|_| fail("it is too large"))
}

/// The suffix as a fraction numerator/denominator of bytes.
fn scale(suffix: &str) -> Option<(u128, u128)> {
    let binary = |power: u32| Some((1u128 << (10 * power), 1));
    let decimal = |exp: u32| Some((10u128.pow(exp), 1));
    match suffix {
        "" => decimal(0),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => Some((1, 1_000_000_000)),
        "u" => Some((1, 1_000_000)),
        "m" => Some((1, 1_000)),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let exp: u32 = exp.strip_prefix('+').unwrap_or(exp).parse().ok()?;
            (exp <= 30).then(|| (10u128.pow(exp), 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_bytes_as_kubernetes_defines_them() {
        let cases = [
            ("0", 0),
            ("1", 1),
            ("1Ki", 1024),
            ("64Mi", 64 << 20),
            ("1.5Gi", 3 << 29),
            ("10Gi", 10 << 30),
            ("500M", 500_000_000),
            ("1k", 1000),
            ("1e3", 1000),
            ("2E", 2_000_000_000_000_000_000),
            ("1500m", 2),
            ("0.5", 1),
            ("+3", 3),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused_with_the_text() {
        for bad in ["", "Mi", "-1Gi", "1.2.3", "12Q", "1Zi", "99999Ei"] {
            let err = parse_bytes(bad).expect_err(bad);
            assert_eq!(err.text, bad);
        }
    }
}
