//! Identifiers, valid by construction.

use std::fmt;

/// Declares a string identifier newtype checked by `$check`.
macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, String> {
                $check(text)?;
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

/// The longest identifier accepted anywhere.
pub const ID_LEN_MAX: usize = 64;

fn check_token(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > ID_LEN_MAX {
        return Err(format!("is {} characters long, the limit is {ID_LEN_MAX}", text.len()));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
    {
        return Err(format!("{text:?} may only hold ASCII letters, digits and - _ . : /"));
    }
    Ok(())
}

fn check_code(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= ID_LEN_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{text:?} does not match [a-z0-9-]{{1,64}}"))
    }
}

/// Member ids are pseudonyms issued by the scheme office. A value shaped like a resident identity card
/// number (17 digits and a digit or X) is refused, so that raw national ID numbers never enter the
/// service, its database or its logs.
fn check_member(text: &str) -> Result<(), String> {
    check_token(text)?;
    let b = text.as_bytes();
    let looks_like_national_id = b.len() == 18
        && b[..17].iter().all(u8::is_ascii_digit)
        && (b[17].is_ascii_digit() || b[17] == b'X' || b[17] == b'x');
    if looks_like_national_id {
        return Err("looks like a national ID number; send the scheme's pseudonymous member id".into());
    }
    Ok(())
}

identifier!(
    /// A product code (`cixi-medical-assistance`), `[a-z0-9-]{1,64}`.
    ProductCode, check_code
);
identifier!(
    /// A benefit code inside one product, `[a-z0-9-]{1,64}`.
    BenefitCode, check_code
);
identifier!(
    /// A claim id, unique per hospital.
    ClaimId, check_token
);
identifier!(HospitalId, check_token);
identifier!(MemberId, check_member);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(ProductCode::parse("cixi-medical-assistance").is_ok());
        assert!(ProductCode::parse("Cixi").is_err());
        assert!(ClaimId::parse(&"x".repeat(65)).unwrap_err().contains("limit is 64"));
        assert!(ClaimId::parse("H1-0001").is_ok());
        assert!(ClaimId::parse("a b").is_err());
        assert!(MemberId::parse("11010519491231002X")
            .unwrap_err()
            .contains("national ID"));
        assert!(MemberId::parse("M-000123").is_ok());
    }
}
