//! Named choices: enums the CLI spells as words.

/// Implements `FromStr` (with an error listing the valid names) and `Display`
/// for an enum from one table of `(name, value)` pairs.
macro_rules! named_choices {
    ($type:ty, $setting:literal, [$(($name:literal, $value:expr)),+ $(,)?]) => {
        impl ::std::str::FromStr for $type {
            type Err = $crate::error::Error;

            fn from_str(s: &str) -> $crate::error::Result<Self> {
                match s {
                    $($name => Ok($value),)+
                    other => Err($crate::error::Error::config(
                        $setting,
                        format!("unknown choice `{other}` (expected one of: {})", [$($name),+].join(", ")),
                    )),
                }
            }
        }

        impl ::std::fmt::Display for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $(if *self == $value {
                    return f.write_str($name);
                })+
                unreachable!("every value has a name")
            }
        }
    };
}
