//! `verge-outbound`: the one guard for requests Verge makes on a user's behalf — task
//! callbacks from the cloud, `artifact.url` downloads on the edge, image sources — so
//! that a URL a user chose never reaches the private network behind the cloud or a node.
//!
//! - [`net`] (pure): which addresses are public ([`non_public_range`],
//!   [`address_allowed`]), the operator's exceptions ([`IpNet`]).
//! - [`guard`] (pure): URL form ([`parse_url`]), the checks on a URL, a redirect hop and
//!   an address.
//! - [`client`]: [`Client`] under a [`Policy`] — a resolver that refuses non-public
//!   addresses, IP literals and every redirect hop checked, the connected peer checked,
//!   one deadline over the whole request, a size cap on the answer; GET streamed
//!   ([`Client::get`] → [`Response::chunk`]) or whole ([`Client::fetch`]), POST
//!   ([`Client::post`], the status and the start of the answer).
//! - [`Error`], with [`Error::redacted`]: what the user who chose the URL may be told
//!   (never why a destination without an answer failed).
//!
//! Below `verge-cloud`, `verge-edge` and `verge-images`; depends on reqwest and rustls
//! only, never on another Verge crate.

pub mod client;
pub mod guard;
pub mod net;

mod error;

pub use client::{
    Answer, Client, Fetched, Policy, Response, USER_AGENT, allow_host_entry, allow_network_entry,
};
pub use error::{Error, NOT_ALLOWED_OR_UNREACHABLE, Result};
pub use guard::{MAX_URL_LEN, parse_url};
pub use net::{IpNet, address_allowed, non_public_range};
pub use reqwest::header;
