//! Walking an error's causes. Each adapter looks for an error of its own (a refused body, a
//! network failure, a reply limit, a rustls error) somewhere under what the SDKs and
//! lettre wrap it in; this is the one walk they share.

use std::error::Error;

/// `error` and all its sources, including the error an `io::Error` wraps (its `source()`
/// skips it: tokio-rustls and our own readers put their errors exactly there).
pub(crate) fn causes<'a>(error: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        chain.push(current);
        next = match current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => current.source(),
        };
    }
    chain
}

/// The first error of type `T` among `error`'s causes.
pub(crate) fn find_cause<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    causes(error).into_iter().find_map(|cause| cause.downcast_ref::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("ours")]
    struct Ours;

    #[test]
    fn finds_an_error_inside_an_io_error_inside_an_sdk_error() {
        let io = std::io::Error::other(Ours);
        let sdk = azure_core::Error::new(azure_core::error::ErrorKind::Io, io);
        assert!(find_cause::<Ours>(&sdk).is_some());
        assert!(find_cause::<std::fmt::Error>(&sdk).is_none());
    }
}
