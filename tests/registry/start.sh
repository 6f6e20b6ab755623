#!/usr/bin/env bash
# Local registry with image-rs test fixtures. Idempotent and safe to run concurrently
# (one flock): starts Debian's docker-registry on 127.0.0.1:5000 (plain HTTP, no auth)
# with its own config and storage under $KATA_CC_REGISTRY_DIR, unless it already answers,
# then builds and pushes the fixtures unless this fixture version is already pushed.
#
# Also serves the same storage over HTTPS on 127.0.0.1:5443 (CA: $DIR/tls/ca.crt).
#
# Needs: docker-registry skopeo umoci openssl busybox-static curl jq (deploy/install-deps.sh).
#
# Fixtures (all linux/amd64 unless said):
#   busybox:latest        one gzip layer: /bin/busybox (busybox-static) + applet symlinks
#   multi:latest          three layers; layer 2 deletes /data/a (.wh.a) and makes /opq
#                         opaque (.wh..wh..opq); layer 3 adds a file
#   zstd:latest           busybox, layers recompressed with zstd
#   encrypted:latest      its own content (/secret.txt), encrypted jwe with keys/pub.pem
#   tampered:latest       own content; one byte of its layer blob changed in the storage
#   truncated:latest      own content; its layer blob cut short in the storage
#   arm64only:latest      linux/arm64 only
#   index:latest          OCI index: linux/arm64 + linux/amd64 (busybox-like content)
#   signed:latest         busybox with a cosign signature by keys/cosign.key
# Keys: $DIR/keys/priv.pem, pub.pem (RSA 2048, openssl); cosign.key/.pub (P-256).
set -euo pipefail

DIR=${KATA_CC_REGISTRY_DIR:-/var/tmp/kata-cc-registry}
ADDR=127.0.0.1:5000
REG=docker://$ADDR
VERSION=5 # bump when fixtures change
mkdir -p "$DIR"
exec 9>"$DIR/lock"
flock 9

log() { echo "registry-fixtures: $*" >&2; }

up() { curl -fsS -o /dev/null --max-time 2 "http://$ADDR/v2/" 2>/dev/null; }

if ! up; then
    mkdir -p "$DIR/storage"
    cat >"$DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/storage
  delete:
    enabled: true
http:
  addr: $ADDR
EOF
    log "starting docker-registry on $ADDR (storage $DIR/storage)"
    setsid docker-registry serve "$DIR/config.yml" >>"$DIR/registry.log" 2>&1 </dev/null 9>&- &
    echo $! >"$DIR/registry.pid"
    for _ in $(seq 1 100); do
        up && break
        sleep 0.1
    done
    up || { log "registry did not come up; see $DIR/registry.log"; exit 1; }
fi

# A second instance over HTTPS (a test CA $DIR/tls/ca.crt signs its SAN IP:127.0.0.1 cert) on
# the same storage, for the HTTPS and CA-bundle tests.
TLS_ADDR=127.0.0.1:5443
tls_up() {
    curl -fsS -o /dev/null --max-time 2 --cacert "$DIR/tls/ca.crt" "https://$TLS_ADDR/v2/" 2>/dev/null
}
if ! tls_up; then
    mkdir -p "$DIR/tls"
    if [[ ! -f "$DIR/tls/server.crt" ]]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=kata-cc-test-ca \
            -keyout "$DIR/tls/ca.key" -out "$DIR/tls/ca.crt" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
            -keyout "$DIR/tls/server.key" -out "$DIR/tls/server.csr" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
            >"$DIR/tls/server.ext"
        openssl x509 -req -in "$DIR/tls/server.csr" -CA "$DIR/tls/ca.crt" -CAkey "$DIR/tls/ca.key" \
            -CAcreateserial -days 3650 -extfile "$DIR/tls/server.ext" -out "$DIR/tls/server.crt" 2>/dev/null
    fi
    printf '%s\n' "version: 0.1" "log:" "  level: warn" "storage:" "  filesystem:" \
        "    rootdirectory: $DIR/storage" "http:" "  addr: $TLS_ADDR" "  tls:" \
        "    certificate: $DIR/tls/server.crt" "    key: $DIR/tls/server.key" >"$DIR/config-tls.yml"
    log "starting docker-registry on $TLS_ADDR (HTTPS)"
    setsid docker-registry serve "$DIR/config-tls.yml" >>"$DIR/registry-tls.log" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 100); do
        tls_up && break
        sleep 0.1
    done
    tls_up || { log "HTTPS registry did not come up; see $DIR/registry-tls.log"; exit 1; }
fi

if [[ -f "$DIR/fixtures.v$VERSION" ]] && curl -fsS -o /dev/null \
    -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$ADDR/v2/index/manifests/latest"; then
    exit 0
fi

log "building fixtures v$VERSION"
W=$DIR/work
rm -rf "$W"
mkdir -p "$W" "$DIR/keys"
cd "$W"
SKOPEO=(skopeo --insecure-policy copy -q --dest-tls-verify=false)

if [[ ! -f "$DIR/keys/priv.pem" ]]; then
    openssl genrsa -out "$DIR/keys/priv.pem" 2048 2>/dev/null
    openssl rsa -in "$DIR/keys/priv.pem" -pubout -out "$DIR/keys/pub.pem" 2>/dev/null
fi

# A rootfs dir with busybox and a few applet links.
busybox_root() {
    mkdir -p "$1/bin" "$1/etc" "$1/tmp"
    cp /bin/busybox "$1/bin/busybox"
    for a in sh ls cat echo true id env; do ln -sf busybox "$1/bin/$a"; done
    echo "root:x:0:0:root:/root:/bin/sh" >"$1/etc/passwd"
    echo "nobody:x:65534:65534:nobody:/:/bin/sh" >>"$1/etc/passwd"
    echo "root:x:0:" >"$1/etc/group"
    echo "nogroup:x:65534:" >>"$1/etc/group"
    chmod 1777 "$1/tmp"
}

# new_image NAME: empty image in the shared layout.
umoci init --layout oci
new_image() { umoci new --image "oci:$1"; }
# add_layer NAME DIR: DIR's contents as a new layer (tar, numeric owners).
add_layer() {
    tar --numeric-owner --owner=0 --group=0 -C "$2" -cf "$W/layer.tar" .
    umoci raw add-layer --image "oci:$1" "$W/layer.tar"
}
push() { "${SKOPEO[@]}" "${@:3}" "oci:oci:$1" "$REG/$2"; }

# busybox
new_image busybox
busybox_root "$W/bb"
add_layer busybox "$W/bb"
umoci config --image oci:busybox --config.cmd /bin/sh --config.env HELLO=world \
    --config.workingdir /tmp
push busybox busybox:latest

# multi: whiteouts
new_image multi
mkdir -p l1/data l1/opq/sub l2/data l2/opq l3/data
busybox_root l1
echo a >l1/data/a
echo b >l1/data/b
echo x >l1/opq/x
echo y >l1/opq/sub/y
ln -s ../data/b l1/data/link-to-b
add_layer multi l1
: >l2/data/.wh.a
: >l2/opq/.wh..wh..opq
echo z >l2/opq/z
add_layer multi l2
echo c >l3/data/c
add_layer multi l3
umoci config --image oci:multi --config.entrypoint /bin/sh --config.cmd -c --config.cmd "echo hi"
push multi multi:latest

# zstd
# (recompressed into a second layout first: a push to the registry would reuse the gzip
# blob it already has instead of recompressing)
skopeo --insecure-policy copy -q --dest-compress-format zstd oci:oci:busybox oci:zstd-oci:busybox
skopeo --insecure-policy copy -q --dest-tls-verify=false oci:zstd-oci:busybox "$REG/zstd:latest"

# encrypted: own content so no layer is shared with a plain image
new_image encrypted
busybox_root enc
echo "encrypted fixture $(date +%s%N)" >enc/secret.txt
add_layer encrypted enc
push encrypted encrypted:latest --encryption-key "jwe:$DIR/keys/pub.pem"

# own-content images for storage tampering
for name in tampered truncated; do
    new_image "$name"
    mkdir -p "$name"
    head -c 300000 /dev/urandom >"$name/random.bin"
    echo "$name" >"$name/name.txt"
    add_layer "$name" "$name"
    push "$name" "$name:latest"
done
blob_of() { # blob data path of layer 0 of image $1
    local d
    d=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$ADDR/v2/$1/manifests/latest" | jq -r '.layers[0].digest')
    echo "$DIR/storage/docker/registry/v2/blobs/sha256/${d:7:2}/${d:7}/data"
}
f=$(blob_of tampered)
size=$(stat -c %s "$f")
printf '\x00' | dd of="$f" bs=1 seek=$((size / 2)) conv=notrunc status=none
printf '\xff' | dd of="$f" bs=1 seek=$((size / 2 + 1)) conv=notrunc status=none
f=$(blob_of truncated)
truncate -s $(($(stat -c %s "$f") / 2)) "$f"

# platforms: arm64 only, and an index with arm64 + amd64
new_image arm64only
mkdir -p arm
echo arm >arm/arch.txt
add_layer arm64only arm
umoci config --image oci:arm64only --architecture arm64
push arm64only arm64only:latest
push arm64only index:arm64
new_image amd
mkdir -p amd
echo amd64 >amd/arch.txt
add_layer amd amd
push amd index:amd64
entry() { # manifest descriptor of tag $1 of repo index, platform $2
    curl -fsS -o "m-$1.json" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$ADDR/v2/index/manifests/$1"
    jq -n --arg d "sha256:$(sha256sum <"m-$1.json" | cut -d' ' -f1)" \
        --argjson s "$(stat -c %s "m-$1.json")" --arg arch "$2" \
        '{mediaType:"application/vnd.oci.image.manifest.v1+json",digest:$d,size:$s,platform:{architecture:$arch,os:"linux"}}'
}
jq -n --argjson a "$(entry arm64 arm64)" --argjson b "$(entry amd64 amd64)" \
    '{schemaVersion:2,mediaType:"application/vnd.oci.image.index.v1+json",manifests:[$a,$b]}' >index.json
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.index.v1+json' \
    --data-binary @index.json "http://$ADDR/v2/index/manifests/latest" >/dev/null

# signed:latest = busybox with a cosign signature. skopeo 1.9.3 signs with
# --sign-by-sigstore-private-key but cannot create that key (cosign's encrypted PEM), so the
# signature is made here the way cosign stores it: an ECDSA P-256 (DER, SHA-256) signature of
# the simple-signing payload, in a manifest tagged sha256-<hex>.sig whose one layer is the
# payload, annotated dev.cosignproject.cosign/signature. keys/cosign.pub verifies it.
if [[ ! -f "$DIR/keys/cosign.key" ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/keys/cosign.key"
    openssl ec -in "$DIR/keys/cosign.key" -pubout -out "$DIR/keys/cosign.pub" 2>/dev/null
fi
push busybox signed:latest
curl -fsS -o signed.json -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$ADDR/v2/signed/manifests/latest"
signed_digest="sha256:$(sha256sum <signed.json | cut -d' ' -f1)"
printf '{"critical":{"identity":{"docker-reference":"%s/signed"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
    "$ADDR" "$signed_digest" >payload.json
sig=$(openssl dgst -sha256 -sign "$DIR/keys/cosign.key" payload.json | base64 -w0)
upload_blob() { # FILE -> descriptor digest
    local loc d
    d="sha256:$(sha256sum <"$1" | cut -d' ' -f1)"
    loc=$(curl -fsS -X POST -D - -o /dev/null "http://$ADDR/v2/signed/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    [[ "$loc" == http* ]] || loc="http://$ADDR$loc"
    [[ "$loc" == *\?* ]] && loc="$loc&digest=$d" || loc="$loc?digest=$d"
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$1" "$loc" >/dev/null
    echo "$d"
}
printf '{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "sha256:$(sha256sum <payload.json | cut -d' ' -f1)" >sigconfig.json
jq -n --arg cd "$(upload_blob sigconfig.json)" --argjson cs "$(stat -c %s sigconfig.json)" \
    --arg pd "$(upload_blob payload.json)" --argjson ps "$(stat -c %s payload.json)" --arg sig "$sig" \
    '{schemaVersion:2,mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json",size:$cs,digest:$cd},
      layers:[{mediaType:"application/vnd.dev.cosign.simplesigning.v1+json",size:$ps,digest:$pd,
               annotations:{"dev.cosignproject.cosign/signature":$sig}}]}' >sigmanifest.json
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary @sigmanifest.json \
    "http://$ADDR/v2/signed/manifests/${signed_digest/:/-}.sig" >/dev/null

cd "$DIR"
rm -rf "$W"
touch "$DIR/fixtures.v$VERSION"
log "fixtures ready"
