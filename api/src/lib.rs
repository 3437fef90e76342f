//! carflow api
