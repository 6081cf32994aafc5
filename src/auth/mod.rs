//! Who is calling: users by HS256 bearer JWT, the operator by `ADMIN_TOKEN`.
//!
//! User-scoped handlers take a [`Caller`] argument, so a route cannot forget to
//! authenticate; ownership is then checked in the use cases with [`Caller::act_for`]
//! (403 on `/users/{other}`) and [`Caller::owns`] (another user's order reads as missing).

mod extract;
mod tokens;

pub use extract::{bearer, Admin, Auth, Caller};
pub use tokens::{MintedToken, TokenService};
