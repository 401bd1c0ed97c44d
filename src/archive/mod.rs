//! The position archive: how positions age. Closed days are packed into compact per-device
//! chunks (`storage::chunk`), each day gets a per-vehicle summary that is kept forever, and
//! whole days expire by dropping their partitions (`[retention]`). This module owns the
//! schedule and the rules; `storage` implements the port in [`store`].

pub mod store;
