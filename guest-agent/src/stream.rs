//! Non-blocking byte streams over the agent-side ends of a process's stdio (pipes or a
//! pty master), driven by tokio's reactor so a slow or silent process never parks a
//! worker thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// One end of a pipe or a pty master, readable and/or writable without blocking.
#[derive(Debug)]
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    /// Wraps `fd`, switching it to non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: `fd` is an open descriptor that the AsyncFd takes ownership of; an
        // `OwnedFd` always reports the same descriptor and closes it only on drop, after
        // the registration is gone.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Reads at most `max` bytes, waiting until some are available. An empty vector
    /// means end of stream: every writer closed the pipe, or the pty's other side hung
    /// up (`EIO` on a pty master).
    pub async fn read_some(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data`, waiting for room in the pipe as needed.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| {
                nix::unistd::write(inner.get_ref().as_fd(), data).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// The underlying descriptor (for `ioctl`s such as a pty window resize).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_round_trip_and_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let reader = FdStream::new(r).unwrap();
        let writer = FdStream::new(w).unwrap();
        writer.write_all(b"hello").await.unwrap();
        assert_eq!(reader.read_some(3).await.unwrap(), b"hel");
        assert_eq!(reader.read_some(100).await.unwrap(), b"lo");
        drop(writer);
        assert!(reader.read_some(100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn large_write_waits_for_reader() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let reader = FdStream::new(r).unwrap();
        let writer = FdStream::new(w).unwrap();
        let data = vec![7u8; 1 << 20];
        let expected = data.len();
        let wt = tokio::spawn(async move { writer.write_all(&data).await });
        let mut got = 0;
        while got < expected {
            let chunk = reader.read_some(65536).await.unwrap();
            assert!(!chunk.is_empty());
            got += chunk.len();
        }
        wt.await.unwrap().unwrap();
    }
}
