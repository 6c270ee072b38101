//! `[api] tokens` with names and roles, and `[ui]`: who may look and who may act.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a token may do: `read` may GET (console pages, listings), `admin` everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Reads only: any state-changing request answers 403.
    Read,
    /// Reads and acts (retry, cancel, redrive, discard, submit).
    Admin,
}

impl TokenRole {
    /// The role's name as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Read => "read",
            TokenRole::Admin => "admin",
        }
    }
}

/// One entry of `api.tokens`: a plain string (an admin token, the original form) or a
/// table `{ name, token, role }`, so that actions can be logged by name and a viewer
/// can be given a token that cannot change anything.
#[derive(Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ApiToken {
    /// A bare token: admin, named by its position in the list.
    Plain(String),
    /// A named token with a role.
    Named {
        /// Who holds it: appears in the logs of the actions taken with it.
        name: String,
        /// The secret itself (never printed).
        token: String,
        /// What it may do.
        role: TokenRole,
    },
}

impl ApiToken {
    /// The secret.
    pub fn secret(&self) -> &str {
        match self {
            ApiToken::Plain(token) | ApiToken::Named { token, .. } => token,
        }
    }

    /// What it may do (a plain string is an admin token).
    pub fn role(&self) -> TokenRole {
        match self {
            ApiToken::Plain(_) => TokenRole::Admin,
            ApiToken::Named { role, .. } => *role,
        }
    }

    /// The name actions are logged with; a plain token is `tokens[<index>]`.
    pub fn name(&self, index: usize) -> String {
        match self {
            ApiToken::Plain(_) => format!("tokens[{index}]"),
            ApiToken::Named { name, .. } => name.clone(),
        }
    }

    /// The same entry with its secret replaced, for `config check`.
    pub(crate) fn redacted(&self) -> ApiToken {
        match self {
            ApiToken::Plain(_) => ApiToken::Plain("<redacted>".into()),
            ApiToken::Named { name, role, .. } => ApiToken::Named {
                name: name.clone(),
                token: "<redacted>".into(),
                role: *role,
            },
        }
    }
}

/// The table form of an entry, as written in the config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedToken {
    name: String,
    token: String,
    role: TokenRole,
}

/// Reads either form. Written by hand rather than `#[serde(untagged)]` so that a wrong
/// type is reported as a type error ("expected a string …") that the config loader can
/// name by key without quoting the value; untagged's only message is "did not match any
/// variant".
impl<'de> Deserialize<'de> for ApiToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ApiToken;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (an admin token) or a table { name, token, role }")
            }

            fn visit_str<E: serde::de::Error>(self, token: &str) -> Result<ApiToken, E> {
                Ok(ApiToken::Plain(token.to_string()))
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<ApiToken, M::Error> {
                let named =
                    NamedToken::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ApiToken::Named {
                    name: named.name,
                    token: named.token,
                    role: named.role,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl From<&str> for ApiToken {
    fn from(token: &str) -> Self {
        ApiToken::Plain(token.to_string())
    }
}

impl From<String> for ApiToken {
    fn from(token: String) -> Self {
        ApiToken::Plain(token)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted token>")
    }
}

/// Checks `api.tokens`: no empty secret or name, no secret or name twice. The reason
/// never quotes a secret.
pub(crate) fn validate_tokens(tokens: &[ApiToken]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    let mut secrets = std::collections::HashSet::new();
    for (index, token) in tokens.iter().enumerate() {
        if token.secret().trim().is_empty() {
            return Err(format!("a token must not be empty (entry {index})"));
        }
        let name = token.name(index);
        if name.trim().is_empty() {
            return Err(format!("entry {index}: `name` must not be empty"));
        }
        if !names.insert(name.clone()) {
            return Err(format!("the name `{name}` is given twice"));
        }
        if !secrets.insert(token.secret()) {
            return Err(format!("entry {index} repeats another entry's token"));
        }
    }
    Ok(())
}

/// `[ui]`: the operator console under `/ui`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    /// With no `api.tokens`, the console is read-only unless this is true (then anyone who
    /// reaches it may act: only for a console bound to a trusted network).
    pub allow_anonymous_admin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_named_tokens_parse_and_plain_ones_are_admin() {
        #[derive(Deserialize)]
        struct Api {
            tokens: Vec<ApiToken>,
        }
        let api: Api =
            toml::from_str(r#"tokens = ["a", { name = "viewer", token = "b", role = "read" }]"#)
                .expect("parses");
        assert_eq!(api.tokens[0].role(), TokenRole::Admin);
        assert_eq!(api.tokens[0].name(0), "tokens[0]");
        assert_eq!(api.tokens[1].role(), TokenRole::Read);
        assert_eq!(api.tokens[1].name(1), "viewer");
        assert_eq!(api.tokens[1].secret(), "b");
    }

    #[test]
    fn empty_and_repeated_tokens_are_refused() {
        assert!(validate_tokens(&["".into()]).is_err());
        assert!(validate_tokens(&["a".into(), "a".into()]).is_err());
        assert!(validate_tokens(&["a".into(), "b".into()]).is_ok());
    }
}
