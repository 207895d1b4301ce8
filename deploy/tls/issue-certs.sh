#!/usr/bin/env bash
# Issues a test CA and agent certificates for the mesh's mutual TLS, with openssl.
#
#   deploy/tls/issue-certs.sh OUT_DIR TRUST_DOMAIN NAME[=DNS,...] ...
#   deploy/tls/issue-certs.sh certs prod.example consumer provider-small=provider-small.mesh
#
# Writes OUT_DIR/ca.pem and ca-key.pem (created once, reused on later runs), and for
# each NAME: NAME.pem (certificate, then the CA's: the chain an agent presents) and
# NAME-key.pem (PKCS#8, mode 0600). Each certificate names the agent's identity as a
# URI SAN in SPIFFE form, spiffe://TRUST_DOMAIN/NAME, plus the DNS SANs after `=`.
# ECDSA P-256, valid DAYS days (default 90; DAYS=1 for rotation drills). For tests and
# first steps: in production the certificates come from your CA (cert-manager, SPIRE,
# Vault, ...); the agents only need PEM files and reload them when they change.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
out=$1 domain=$2
shift 2
days=${DAYS:-90}
mkdir -p "$out"
umask 077
if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem" -days "$((days * 4))" \
    -subj "/O=dubbo-mesh/CN=dubbo-mesh test CA ($domain)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
for spec in "$@"; do
  name=${spec%%=*}
  dns=""
  [ "$spec" != "$name" ] && dns=${spec#*=}
  case $name in
    ""|*/*|*..*) echo "bad agent name: $name" >&2; exit 2 ;;
  esac
  san="URI:spiffe://$domain/$name"
  IFS=, read -ra names <<<"$dns"
  for d in "${names[@]}"; do
    san="$san,DNS:$d"
  done
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$out/$name-key.pem" -out "$out/$name.csr" -subj "/O=dubbo-mesh/CN=$name" 2>/dev/null
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -CAcreateserial -out "$out/$name.leaf.pem" -days "$days" \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san") 2>/dev/null
  cat "$out/$name.leaf.pem" "$out/ca.pem" >"$out/$name.pem"
  rm -f "$out/$name.csr" "$out/$name.leaf.pem"
  chmod 600 "$out/$name-key.pem"
  chmod 644 "$out/$name.pem"
  echo "$out/$name.pem: spiffe://$domain/$name${dns:+ (DNS: $dns)}"
done
chmod 644 "$out/ca.pem"
