//! Who is calling: users by HS256 bearer JWT, the operator by `ADMIN_TOKEN`.
//!
//! User-scoped handlers take a [`Caller`] argument, so a route cannot forget to
//! authenticate; ownership is then checked in the use cases with [`Caller::act_for`]
//! (403 on `/users/{other}`) and [`Caller::owns`] (another user's order reads as missing).

mod extract;
mod tokens;

use std::sync::Arc;

pub use extract::{bearer, Admin, Caller};
pub use tokens::{MintedToken, TokenService};

use crate::config::Config;

/// What the extractors need: the user token service and the admin token.
#[derive(Clone)]
pub struct Auth {
    pub tokens: Arc<TokenService>,
    pub admin_token: Option<Arc<str>>,
}

impl Auth {
    pub fn new(config: &Config) -> Self {
        Self {
            tokens: Arc::new(TokenService::new(&config.auth)),
            admin_token: config.admin_token.as_deref().map(Arc::from),
        }
    }
}
