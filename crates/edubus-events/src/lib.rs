//! Event types generated from the catalog (under construction).
