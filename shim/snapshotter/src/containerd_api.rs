//! The few containerd API calls `register-image` makes besides the snapshot service
//! (whose client `containerd-snapshots` generates): Images.Get, Content.Read and
//! Content.Update, as hand-written prost messages (field numbers from containerd's
//! `api/services/{images,content}/v1/*.proto` and `api/types/descriptor.proto`), and a
//! channel over containerd's unix socket.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::Service;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{IntoRequest, Request, Status};

/// The gRPC metadata key containerd reads the namespace from.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC metadata key containerd reads the lease from.
const LEASE_HEADER: &str = "containerd-lease";

/// `containerd.types.Descriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    /// Media type.
    #[prost(string, tag = "1")]
    pub media_type: String,
    /// Digest (`sha256:...`).
    #[prost(string, tag = "2")]
    pub digest: String,
    /// Size in bytes.
    #[prost(int64, tag = "3")]
    pub size: i64,
    /// Annotations.
    #[prost(map = "string, string", tag = "5")]
    pub annotations: HashMap<String, String>,
}

/// `containerd.services.images.v1.Image` (the fields we use).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Image name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Labels.
    #[prost(map = "string, string", tag = "2")]
    pub labels: HashMap<String, String>,
    /// Root descriptor (index or manifest).
    #[prost(message, optional, tag = "3")]
    pub target: Option<Descriptor>,
}

/// `CreateImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateImageRequest {
    /// The image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
}

/// `UpdateImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateImageRequest {
    /// The image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
    /// Fields to update.
    #[prost(message, optional, tag = "2")]
    pub update_mask: Option<prost_types::FieldMask>,
}

/// `WriteContentRequest` (one message: action COMMIT with all the data).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteContentRequest {
    /// 0 STAT, 1 WRITE, 2 COMMIT.
    #[prost(int32, tag = "1")]
    pub action: i32,
    /// Ingest reference.
    #[prost(string, tag = "2")]
    pub r#ref: String,
    /// Total size.
    #[prost(int64, tag = "3")]
    pub total: i64,
    /// Expected digest.
    #[prost(string, tag = "4")]
    pub expected: String,
    /// Offset of `data`.
    #[prost(int64, tag = "5")]
    pub offset: i64,
    /// The bytes.
    #[prost(bytes = "vec", tag = "6")]
    pub data: Vec<u8>,
    /// Labels of the committed blob.
    #[prost(map = "string, string", tag = "7")]
    pub labels: HashMap<String, String>,
}

/// `WriteContentResponse` (the fields we read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteContentResponse {
    /// Action answered.
    #[prost(int32, tag = "1")]
    pub action: i32,
    /// Digest once committed.
    #[prost(string, tag = "6")]
    pub digest: String,
}

/// `leases.v1.CreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCreateRequest {
    /// Lease ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Labels.
    #[prost(map = "string, string", tag = "3")]
    pub labels: HashMap<String, String>,
}

/// `leases.v1.DeleteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseDeleteRequest {
    /// Lease ID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Wait for garbage collection.
    #[prost(bool, tag = "2")]
    pub sync: bool,
}

/// An empty message (`google.protobuf.Empty`, and responses whose fields we ignore).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `GetImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageRequest {
    /// Image name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `GetImageResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageResponse {
    /// The image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
}

/// `ReadContentRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadContentRequest {
    /// Blob digest.
    #[prost(string, tag = "1")]
    pub digest: String,
    /// Offset to start at.
    #[prost(int64, tag = "2")]
    pub offset: i64,
    /// Bytes to read, 0 for all.
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `ReadContentResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadContentResponse {
    /// Offset of `data`.
    #[prost(int64, tag = "1")]
    pub offset: i64,
    /// The bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// `containerd.services.content.v1.Info` (the fields we send).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentInfo {
    /// Blob digest.
    #[prost(string, tag = "1")]
    pub digest: String,
    /// Labels.
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
}

/// `UpdateRequest` of the content service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentUpdateRequest {
    /// New info.
    #[prost(message, optional, tag = "1")]
    pub info: Option<ContentInfo>,
    /// Fields to update (`labels.KEY`).
    #[prost(message, optional, tag = "2")]
    pub update_mask: Option<prost_types::FieldMask>,
}

/// `UpdateResponse` of the content service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContentUpdateResponse {
    /// The updated info.
    #[prost(message, optional, tag = "1")]
    pub info: Option<ContentInfo>,
}

/// Connects to containerd's gRPC socket.
pub async fn connect(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    // The URI is required by tonic and ignored: the connector dials the socket.
    Endpoint::from_static("http://containerd.sock")
        .connect_with_connector(UnixConnector(socket))
        .await
}

/// Dials a unix socket for tonic.
#[derive(Clone, Debug)]
struct UnixConnector(PathBuf);

impl Service<Uri> for UnixConnector {
    type Response = tokio::net::UnixStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<tokio::net::UnixStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { tokio::net::UnixStream::connect(path).await })
    }
}

/// A connection to containerd in one namespace, optionally under a lease.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The channel.
    pub channel: Channel,
    namespace: AsciiMetadataValue,
    lease: Option<(String, AsciiMetadataValue)>,
}

/// A namespace or lease name that cannot be a gRPC header value.
#[derive(Debug, thiserror::Error)]
#[error("invalid containerd {what} {value:?}: not a valid gRPC header value")]
pub struct InvalidName {
    what: &'static str,
    value: String,
}

fn header(what: &'static str, value: &str) -> Result<AsciiMetadataValue, InvalidName> {
    value.parse().map_err(|_| InvalidName {
        what,
        value: value.to_owned(),
    })
}

impl Ctx {
    /// A context in `namespace`.
    pub fn new(channel: Channel, namespace: &str) -> Result<Ctx, InvalidName> {
        Ok(Ctx {
            channel,
            namespace: header("namespace", namespace)?,
            lease: None,
        })
    }

    /// The lease requests run under, if any.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_ref().map(|(id, _)| id.as_str())
    }

    /// Wraps `msg` with the namespace (and lease) headers.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = msg.into_request();
        let md = req.metadata_mut();
        md.insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some((_, lease)) = &self.lease {
            md.insert(LEASE_HEADER, lease.clone());
        }
        req
    }

    async fn unary<Q, R>(&self, path: &'static str, msg: Q) -> Result<R, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        ready(&mut grpc).await?;
        let req = self.request(msg);
        let resp = grpc
            .unary(
                req,
                PathAndQuery::from_static(path),
                tonic::codec::ProstCodec::default(),
            )
            .await?;
        Ok(resp.into_inner())
    }

    /// Images.Get.
    pub async fn get_image(&self, name: &str) -> Result<Image, Status> {
        let resp: GetImageResponse = self
            .unary(
                "/containerd.services.images.v1.Images/Get",
                GetImageRequest {
                    name: name.to_owned(),
                },
            )
            .await?;
        resp.image
            .ok_or_else(|| Status::internal(format!("containerd returned no image for {name:?}")))
    }

    /// Images.Create, or Images.Update of the target if the image exists.
    pub async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), Status> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(target),
        };
        let created: Result<Empty, Status> = self
            .unary(
                "/containerd.services.images.v1.Images/Create",
                CreateImageRequest {
                    image: Some(image.clone()),
                },
            )
            .await;
        match created {
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let _: Empty = self
                    .unary(
                        "/containerd.services.images.v1.Images/Update",
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                        },
                    )
                    .await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Content.Read of a whole blob, refusing blobs larger than `max`.
    pub async fn read_blob(&self, digest: &str, max: usize) -> Result<Vec<u8>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        ready(&mut grpc).await?;
        let req = self.request(ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        });
        let path = PathAndQuery::from_static("/containerd.services.content.v1.Content/Read");
        let mut stream = grpc
            .server_streaming::<_, ReadContentResponse, _>(
                req,
                path,
                tonic::codec::ProstCodec::default(),
            )
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend_from_slice(&chunk.data);
            if out.len() > max {
                return Err(Status::out_of_range(format!(
                    "blob {digest} is larger than {max} bytes"
                )));
            }
        }
        Ok(out)
    }

    /// Content.Write of a whole (small) blob with labels. An existing blob is fine.
    pub async fn write_blob(
        &self,
        digest: &str,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        ready(&mut grpc).await?;
        let total = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let msg = WriteContentRequest {
            action: 2,
            r#ref: format!("kata-cc-snapshotter-{digest}"),
            total,
            expected: digest.to_owned(),
            offset: 0,
            data,
            labels: labels.clone(),
        };
        let req = self.request(tokio_stream::iter(vec![msg]));
        let path = PathAndQuery::from_static("/containerd.services.content.v1.Content/Write");
        let result = grpc
            .streaming::<_, _, WriteContentResponse, _>(
                req,
                path,
                tonic::codec::ProstCodec::default(),
            )
            .await;
        match result {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while stream.message().await?.is_some() {}
                Ok(())
            }
            // Already there: make sure it has our labels.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                for (k, v) in &labels {
                    self.set_content_label(digest, k, v).await?;
                }
                Ok(())
            }
            Err(s) => Err(s),
        }
    }

    /// Content.Update of one label of a blob.
    pub async fn set_content_label(
        &self,
        digest: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Status> {
        let _: ContentUpdateResponse = self
            .unary(
                "/containerd.services.content.v1.Content/Update",
                ContentUpdateRequest {
                    info: Some(ContentInfo {
                        digest: digest.to_owned(),
                        labels: HashMap::from([(key.to_owned(), value.to_owned())]),
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{key}")],
                    }),
                },
            )
            .await?;
        Ok(())
    }

    /// Leases.Create; returns a context whose requests run under the lease.
    pub async fn with_new_lease(&self, id: &str) -> Result<Ctx, Status> {
        let value = header("lease", id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _: Empty = self
            .unary(
                "/containerd.services.leases.v1.Leases/Create",
                LeaseCreateRequest {
                    id: id.to_owned(),
                    labels: HashMap::new(),
                },
            )
            .await?;
        Ok(Ctx {
            lease: Some((id.to_owned(), value)),
            ..self.clone()
        })
    }

    /// Leases.Delete of this context's lease (if any).
    pub async fn delete_lease(&self) -> Result<(), Status> {
        let Some((id, _)) = &self.lease else {
            return Ok(());
        };
        let plain = Ctx {
            lease: None,
            ..self.clone()
        };
        let _: Empty = plain
            .unary(
                "/containerd.services.leases.v1.Leases/Delete",
                LeaseDeleteRequest {
                    id: id.clone(),
                    sync: false,
                },
            )
            .await?;
        Ok(())
    }
}

async fn ready(grpc: &mut tonic::client::Grpc<Channel>) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("containerd is not reachable: {e}")))
}
