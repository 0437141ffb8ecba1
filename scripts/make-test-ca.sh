#!/usr/bin/env bash
# Makes a throwaway certificate authority and a server certificate signed
# by it, for TLS in tests and trials (not for production: keys are
# unencrypted and the CA lives beside them).
#
#   scripts/make-test-ca.sh DIR [NAME...]
#
# Writes DIR/ca.pem (what clients and workers trust: --tls_ca_file),
# DIR/server.pem and DIR/server.key (tlserve --tls_cert_file,
# --tls_key_file). The certificate names localhost, 127.0.0.1, ::1 and
# tlserve, plus each NAME given (DNS names, or IP addresses).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [NAME...]" >&2
  exit 2
fi
dir="$1"
shift
mkdir -p "$dir"
sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:tlserve"
for name in "$@"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
    sans+=",IP:$name"
  else
    sans+=",DNS:$name"
  fi
done
days=30
openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=tlserve test CA" \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=tlserve" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
  -CAcreateserial -days "$days" -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 600 "$dir/ca.key" "$dir/server.key"
echo "CA: $dir/ca.pem; server certificate: $dir/server.pem (names $sans), key $dir/server.key"
