//! The null-ack baseline (`fleetgate baseline-server`): a Teltonika TCP server that answers
//! the IMEI handshake and acks each Codec 8/8E packet with its record count, without checking
//! the CRC, decoding, storing or logging anything. Run against `fleetgate sim` it measures what
//! stop-and-wait ingest costs on this machine (syscalls, loopback, the simulator itself): the
//! ceiling fleetgate's rates are compared with.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accept and serve connections forever.
pub async fn serve(listen: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("baseline-server listening on {}", listener.local_addr()?);
    serve_on(listener).await
}

/// Serve an already bound listener (tests bind port 0).
pub async fn serve_on(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

async fn connection(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    let mut imei = vec![0u8; usize::from(u16::from_be_bytes(head))];
    s.read_exact(&mut imei).await?;
    s.write_all(&[1]).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        // Cut and ack every whole packet buffered: 4 zero bytes, u32 length, data, u32 CRC.
        while end - start >= 8 {
            let b = &buf[start..end];
            let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
            if b[..4] != [0, 0, 0, 0] || !(2..=buf.len() - 12).contains(&len) {
                return Ok(());
            }
            if b.len() < 12 + len {
                break;
            }
            let records = u32::from(b[9]);
            start += 12 + len;
            s.write_all(&records.to_be_bytes()).await?;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if start > 0 && buf.len() - end < 4096 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let n = s.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}
