//! The imgproxy-compatible URL format. (Being written.)
