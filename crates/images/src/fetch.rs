//! Fetching source images by URL, with an SSRF guard. (Being written.)
