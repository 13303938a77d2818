//! lambda-speed
