//! The crate's one macro: an enum of words as they are spelled on the wire.

/// Declares an enum whose variants are words on the wire, with `ALL`, `as_str`, `from_field`
/// and `Display`.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }

        impl $name {
            /// Every variant, in the order of the declaration.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Reads the word on the wire.
            pub fn from_field(field: &[u8]) -> Option<Self> {
                match field { $(f if f == $text.as_bytes() => Some($name::$variant),)* _ => None }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
