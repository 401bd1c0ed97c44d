//! One end-to-end test per tracker protocol over real sockets: the daemon on ephemeral ports,
//! a device session (login/identification and several positions, TCP and, where the protocol
//! uses it, UDP), every reply checked byte for byte against bytes computed in the test from the
//! protocol's documents, every position read back through `GET /api/v1/vehicles/{id}/track`.
//! Each protocol is one file under `tests/protocols/`.

mod common;

mod protocols {
    pub mod support;

    mod adm;
    mod arnavi;
    mod autofon;
    mod egts;
    mod galileo;
    mod gl200;
    mod gps103;
    mod gt06;
    mod h02;
    mod jt808;
    mod meitrack;
    mod navtelecom;
    mod omnicomm;
    mod osmand;
    mod ruptela;
    mod teltonika;
    mod wialon;
}
