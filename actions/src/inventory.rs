//! The TOML inventory of BRIEF.md: parsing and validation with errors that name the key.
