//! Derive macros for chronik.
//!
//! `#[derive(DomainEvent)]` implements `DomainEvent` for an adjacently tagged serde enum
//! (`#[serde(tag = "type", content = "data")]`), reading the stored event type of each
//! variant from the same attributes serde reads (`rename`, `rename_all`), so that the type
//! name an event is stored under is always the tag serde writes and reads. Use it through
//! the `chronik` facade (`chronik::DomainEvent`) or `chronik-core`.
//!
//! **Invariant:** the generated `event_type()` equals serde's variant tag for every
//! variant; anything the macro cannot mirror exactly (a serialize-only rename, `skip`,
//! `other`, another enum representation) is a compile error, never a silent guess.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{Data, DeriveInput, Fields, LitInt, LitStr, Path, parse_macro_input};

/// Implements `DomainEvent` for a serde enum tagged `#[serde(tag = "type", content = "data")]`.
///
/// - The stored event type of a variant is its serde tag: the variant's name, or its
///   `#[serde(rename = "...")]`, or the enum's `#[serde(rename_all = "...")]` applied to it.
/// - `#[event(schema_version = N)]` on a variant sets the payload schema version this code
///   writes for it (default 1); upcasters lift older stored versions to it.
/// - `#[event(crate = "path")]` on the enum names the crate the trait comes from when it is
///   neither `chronik` nor `chronik-core` under its own name.
///
/// The implementation also lists every variant's type and version in
/// `DomainEvent::EVENT_TYPES` (used by typed projections and the operator tool).
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// serde's `rename_all` rules, for variant names (written in `PascalCase`).
#[derive(Clone, Copy)]
enum Case {
    Lower,
    Upper,
    Pascal,
    Camel,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
}

impl Case {
    fn parse(lit: &LitStr) -> syn::Result<Self> {
        Ok(match lit.value().as_str() {
            "lowercase" => Self::Lower,
            "UPPERCASE" => Self::Upper,
            "PascalCase" => Self::Pascal,
            "camelCase" => Self::Camel,
            "snake_case" => Self::Snake,
            "SCREAMING_SNAKE_CASE" => Self::ScreamingSnake,
            "kebab-case" => Self::Kebab,
            "SCREAMING-KEBAB-CASE" => Self::ScreamingKebab,
            other => {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("unknown serde rename_all rule {other:?}"),
                ));
            }
        })
    }

    /// What serde makes of variant `name` under this rule.
    fn apply(self, name: &str) -> String {
        let snake = || {
            let mut out = String::with_capacity(name.len() + 4);
            for (i, c) in name.char_indices() {
                if c.is_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        };
        match self {
            Self::Lower => name.to_ascii_lowercase(),
            Self::Upper => name.to_ascii_uppercase(),
            Self::Pascal => name.to_owned(),
            Self::Camel => {
                let mut chars = name.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_lowercase().to_string() + chars.as_str()
                })
            }
            Self::Snake => snake(),
            Self::ScreamingSnake => snake().to_ascii_uppercase(),
            Self::Kebab => snake().replace('_', "-"),
            Self::ScreamingKebab => snake().to_ascii_uppercase().replace('_', "-"),
        }
    }
}

/// What the enum's own attributes say.
struct EnumAttrs {
    tag: Option<String>,
    content: Option<String>,
    rename_all: Option<Case>,
    krate: Option<Path>,
}

/// A `rename`-like value: one string, or `(serialize = "..", deserialize = "..")`, which
/// must then agree (a stored type is both written and read).
fn one_name(meta: &syn::meta::ParseNestedMeta<'_>, what: &str) -> syn::Result<LitStr> {
    if meta.input.peek(syn::Token![=]) {
        return meta.value()?.parse();
    }
    let (mut ser, mut de) = (None::<LitStr>, None::<LitStr>);
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("serialize") {
            ser = Some(inner.value()?.parse()?);
        } else if inner.path.is_ident("deserialize") {
            de = Some(inner.value()?.parse()?);
        } else {
            return Err(inner.error("expected `serialize` or `deserialize`"));
        }
        Ok(())
    })?;
    match (ser, de) {
        (Some(s), Some(d)) if s.value() == d.value() => Ok(s),
        _ => Err(meta.error(format!(
            "DomainEvent needs one name for both directions: a stored event type is written \
             and read under the same name, so `{what}(serialize = .., deserialize = ..)` must \
             give both, equal"
        ))),
    }
}

fn enum_attrs(input: &DeriveInput) -> syn::Result<EnumAttrs> {
    let mut attrs = EnumAttrs {
        tag: None,
        content: None,
        rename_all: None,
        krate: None,
    };
    for attr in &input.attrs {
        if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("tag") {
                    attrs.tag = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("content") {
                    attrs.content = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("rename_all") {
                    attrs.rename_all = Some(Case::parse(&one_name(&meta, "rename_all")?)?);
                } else if meta.path.is_ident("untagged") {
                    return Err(meta.error(
                        "DomainEvent needs `#[serde(tag = \"type\", content = \"data\")]`, not `untagged`",
                    ));
                } else if meta.input.peek(syn::Token![=]) {
                    // Other serde options (`crate`, `deny_unknown_fields`, ...) do not
                    // change variant names: skip their value.
                    let _ = meta.value()?.parse::<syn::Expr>()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _ = meta.parse_nested_meta(|inner| {
                        if inner.input.peek(syn::Token![=]) {
                            let _ = inner.value()?.parse::<syn::Expr>()?;
                        }
                        Ok(())
                    });
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("event") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("crate") {
                    attrs.krate = Some(meta.value()?.parse::<LitStr>()?.parse()?);
                    Ok(())
                } else {
                    Err(meta.error("on the enum, #[event(...)] takes only `crate = \"path\"`"))
                }
            })?;
        }
    }
    Ok(attrs)
}

/// A variant's serde name override and chronik schema version.
fn variant_attrs(variant: &syn::Variant) -> syn::Result<(Option<LitStr>, u32)> {
    let mut rename = None;
    let mut version = 1u32;
    for attr in &variant.attrs {
        if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    rename = Some(one_name(&meta, "rename")?);
                } else if meta.path.is_ident("skip")
                    || meta.path.is_ident("skip_serializing")
                    || meta.path.is_ident("skip_deserializing")
                    || meta.path.is_ident("other")
                    || meta.path.is_ident("untagged")
                {
                    return Err(meta.error(
                        "a DomainEvent variant is always written and read: `skip`, `other` and \
                         `untagged` variants cannot be stored events",
                    ));
                } else if meta.input.peek(syn::Token![=]) {
                    let _ = meta.value()?.parse::<syn::Expr>()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _ = meta.parse_nested_meta(|inner| {
                        if inner.input.peek(syn::Token![=]) {
                            let _ = inner.value()?.parse::<syn::Expr>()?;
                        }
                        Ok(())
                    });
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("event") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("schema_version") {
                    let lit: LitInt = meta.value()?.parse()?;
                    version = lit.base10_parse()?;
                    if version == 0 {
                        return Err(syn::Error::new(lit.span(), "schema versions start at 1"));
                    }
                    Ok(())
                } else {
                    Err(meta.error("on a variant, #[event(...)] takes only `schema_version = N`"))
                }
            })?;
        }
    }
    Ok((rename, version))
}

/// The path of the crate that defines `DomainEvent`, as the deriving crate names it.
fn crate_path(explicit: Option<Path>) -> syn::Result<TokenStream2> {
    use proc_macro_crate::{FoundCrate, crate_name};
    if let Some(path) = explicit {
        return Ok(quote!(#path));
    }
    // Both crates declare `extern crate self as <name>`, so `::<name>` also resolves inside
    // the crate itself, its examples and its doctests (where `crate` would not).
    for name in ["chronik", "chronik-core"] {
        let ident = match crate_name(name) {
            Ok(FoundCrate::Itself) => name.replace('-', "_"),
            Ok(FoundCrate::Name(n)) => n,
            Err(_) => continue,
        };
        let ident = syn::Ident::new(&ident, Span::call_site());
        return Ok(quote!(::#ident));
    }
    Err(syn::Error::new(
        Span::call_site(),
        "DomainEvent: add `chronik` to [dependencies] (or name the crate with \
         #[event(crate = \"path\")])",
    ))
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new(
            input.span(),
            "DomainEvent is derived for enums (one variant per event type)",
        ));
    };
    let attrs = enum_attrs(input)?;
    if attrs.tag.as_deref() != Some("type") || attrs.content.as_deref() != Some("data") {
        return Err(syn::Error::new(
            input.ident.span(),
            "DomainEvent needs the enum to be tagged `#[serde(tag = \"type\", content = \"data\")]`: \
             the tag is the stored event type, the content its payload",
        ));
    }
    if data.variants.is_empty() {
        return Err(syn::Error::new(
            input.ident.span(),
            "DomainEvent needs at least one variant",
        ));
    }
    let krate = crate_path(attrs.krate)?;
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    let mut arms_type = Vec::new();
    let mut arms_version = Vec::new();
    let mut infos = Vec::new();
    let mut seen: Vec<(String, Span)> = Vec::new();
    for variant in &data.variants {
        let (rename, version) = variant_attrs(variant)?;
        let stored = match (&rename, attrs.rename_all) {
            (Some(lit), _) => lit.value(),
            (None, Some(case)) => case.apply(&variant.ident.to_string()),
            (None, None) => variant.ident.to_string(),
        };
        if let Some((_, _)) = seen.iter().find(|(s, _)| *s == stored) {
            return Err(syn::Error::new(
                variant.span(),
                format!("two variants are stored as event type {stored:?}"),
            ));
        }
        if stored.is_empty()
            || stored.len() > 255
            || stored.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(syn::Error::new(
                variant.span(),
                format!(
                    "{stored:?} is not a valid event type: 1 to 255 bytes, no whitespace or control characters"
                ),
            ));
        }
        seen.push((stored.clone(), variant.span()));
        let ident = &variant.ident;
        let pattern = match &variant.fields {
            Fields::Named(_) => quote!(Self::#ident { .. }),
            Fields::Unnamed(_) => quote!(Self::#ident(..)),
            Fields::Unit => quote!(Self::#ident),
        };
        arms_type.push(quote!(#pattern => #stored));
        arms_version.push(quote!(#pattern => #version));
        infos.push(quote!(#krate::EventTypeInfo { name: #stored, schema_version: #version }));
    }
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::DomainEvent for #name #ty_generics #where_clause {
            const EVENT_TYPES: &'static [#krate::EventTypeInfo] = &[#(#infos),*];

            fn event_type(&self) -> &'static str {
                match self { #(#arms_type,)* }
            }

            fn schema_version(&self) -> u32 {
                match self { #(#arms_version,)* }
            }

            fn to_payload(&self) -> ::core::result::Result<
                #krate::__private::serde_json::Value,
                #krate::__private::serde_json::Error,
            > {
                #krate::encode_event(self)
            }

            fn from_payload(
                event_type: &str,
                payload: #krate::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, #krate::__private::serde_json::Error> {
                #krate::decode_event(event_type, payload)
            }

            fn from_json(
                event_type: &str,
                payload: &str,
            ) -> ::core::result::Result<Self, #krate::__private::serde_json::Error> {
                #krate::decode_event_json(event_type, payload)
            }

            fn encode(&self) -> ::core::result::Result<#krate::EncodedEvent, #krate::EncodeError> {
                #krate::encode_tagged(self, #krate::DomainEvent::event_type(self), #krate::DomainEvent::schema_version(self))
            }
        }
    })
}
