//! OsmAnd / Traccar Client over HTTP on its own port, spoken as raw HTTP/1.1 on one keep-alive
//! TCP connection: GET and POST query reports, a form body, a JSON (background-geolocation)
//! body; each answered `200 OK` with an empty body, a request without a position `400`.

use fleetgate::protocols::osmand::{encode_json_request, encode_query_request};
use fleetgate::protocols::Protocol;

use super::support::{assert_track, t, Daemon, Expect};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
const KNOT_KMH: f64 = 1.852;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osmand_http_reports_are_answered_and_stored() {
    let d = Daemon::start().await;
    let id = "phone-77";
    let mut dev = d.tcp(Protocol::OsmAnd).await;
    let mut want = Vec::new();

    // GET with query parameters, speed in knots (Traccar Client).
    let get = format!(
        "GET /?id={id}&timestamp={}&lat=55.75&lon=37.6173&speed=10&bearing=90&altitude=150&batt=87 HTTP/1.1\r\nHost: fleetgate\r\n\r\n",
        t(0).timestamp()
    );
    dev.send(get.as_bytes()).await;
    assert_eq!(dev.read(OK.len()).await, OK);
    want.push(Expect {
        time: t(0),
        lat: 55.75,
        lon: 37.6173,
        speed_kmh: 10.0 * KNOT_KMH,
    });

    // POST with the parameters in the URI (the encoder: km/h sent as knots).
    dev.send(&encode_query_request(
        id,
        t(10),
        55.751,
        37.6173,
        37.04,
        &[("hdop", "1.2")],
    ))
    .await;
    assert_eq!(dev.read(OK.len()).await, OK);
    want.push(Expect {
        time: t(10),
        lat: 55.751,
        lon: 37.6173,
        speed_kmh: 37.04,
    });

    // POST with a form body.
    let form = format!(
        "id={id}&timestamp={}&lat=55.752&lon=37.6173&speed=20",
        t(20).timestamp()
    );
    let post = format!(
        "POST / HTTP/1.1\r\nHost: fleetgate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    dev.send(post.as_bytes()).await;
    assert_eq!(dev.read(OK.len()).await, OK);
    want.push(Expect {
        time: t(20),
        lat: 55.752,
        lon: 37.6173,
        speed_kmh: 20.0 * KNOT_KMH,
    });

    // JSON body (Traccar Client 8+), speed in m/s.
    dev.send(&encode_json_request(id, t(30), 55.753, 37.6173, 54.0))
        .await;
    assert_eq!(dev.read(OK.len()).await, OK);
    want.push(Expect {
        time: t(30),
        lat: 55.753,
        lon: 37.6173,
        speed_kmh: 54.0,
    });

    // A request that is no report: 400, and the connection goes on.
    dev.send(b"GET /?foo=bar HTTP/1.1\r\nHost: fleetgate\r\n\r\n")
        .await;
    assert_eq!(dev.read(BAD.len()).await, BAD);
    dev.send(&encode_query_request(id, t(40), 55.754, 37.6173, 0.0, &[]))
        .await;
    assert_eq!(dev.read(OK.len()).await, OK);
    want.push(Expect {
        time: t(40),
        lat: 55.754,
        lon: 37.6173,
        speed_kmh: 0.0,
    });

    assert_track(&d.track(id).await, &want, 1e-9, 1e-6);
    d.stop().await;
}
