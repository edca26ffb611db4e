//! The sidecar's own authentication, checked before any command reaches Redis.
//!
//! Passwords are compared in constant time, and every configured entry is compared on every
//! attempt, so timing reveals neither a password prefix nor which user names exist.

use subtle::ConstantTimeEq;

use crate::config::AuthSection;

/// Configured credentials.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Auth {
    /// Builds the table: `password` belongs to the user `default`.
    pub fn new(cfg: &AuthSection) -> Auth {
        let mut entries = Vec::new();
        if let Some(p) = &cfg.password {
            entries.push((b"default".to_vec(), p.as_bytes().to_vec()));
        }
        for u in &cfg.users {
            entries.push((u.name.as_bytes().to_vec(), u.password.as_bytes().to_vec()));
        }
        Auth { entries }
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks a user (None = `default`) and password.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> bool {
        let user = user.unwrap_or(b"default");
        let mut ok = subtle::Choice::from(0u8);
        for (u, p) in &self.entries {
            let user_eq = u.as_slice().ct_eq(user);
            let pass_eq = p.as_slice().ct_eq(password);
            ok |= user_eq & pass_eq;
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    #[test]
    fn checks_default_and_named_users() {
        let a = Auth::new(&AuthSection {
            password: Some("pw".into()),
            users: vec![UserConfig {
                name: "app".into(),
                password: "s3cret".into(),
            }],
        });
        assert!(a.required());
        assert!(a.check(None, b"pw"));
        assert!(a.check(Some(b"default"), b"pw"));
        assert!(a.check(Some(b"app"), b"s3cret"));
        assert!(!a.check(Some(b"app"), b"pw"));
        assert!(!a.check(None, b"p"));
        assert!(!Auth::new(&AuthSection::default()).required());
    }
}
