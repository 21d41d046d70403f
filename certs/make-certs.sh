#!/usr/bin/env bash
# Generate the NTS-KE test certificates for ntimed.
#
# Usage: bash certs/make-certs.sh   (from anywhere; writes into the folder this script lives in)
#
# Needs only the system `openssl` (written against OpenSSL 3.0 on Debian 12). All keys are
# ECDSA P-256 in PKCS#8 PEM ("BEGIN PRIVATE KEY"). Everything produced here is PUBLIC TEST
# MATERIAL: never use these keys or certificates for anything real.
#
# OpenSSL 3.0's `req -x509` and `x509 -req` cannot set an arbitrary notBefore (-not_before
# only arrived in OpenSSL 3.4), so every CA-signed certificate is issued with `openssl ca`
# against a throwaway database in a temporary directory; `openssl ca -startdate/-enddate`
# accepts any date, including GeneralizedTime years >= 2050.
#
# The script builds everything in a temporary directory, checks it with `openssl verify`, and
# only then installs the files, so a failed run leaves the previous certificates in place.

set -euo pipefail

OUT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VALID_DAYS=7305 # 20 years (5 leap days)

# Fixed windows for the deliberately time-invalid certificates (UTC).
EXPIRED_START=20200101000000Z
EXPIRED_END=20210101000000Z
FUTURE_START=20900101000000Z
FUTURE_END=20910101000000Z

command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# --- OpenSSL configuration: `req` settings, a minimal `ca` per issuing CA, extension sets ---
cat >openssl.cnf <<'EOF'
[ req ]
distinguished_name = req_dn
prompt             = no
utf8               = yes
string_mask        = utf8only

[ req_dn ]
# unused: every subject is given with -subj

[ testca ]
dir = ./db-testca
database        = $dir/index.txt
new_certs_dir   = $dir/newcerts
serial          = $dir/serial
default_md      = sha256
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no
preserve        = yes

[ otherca ]
dir = ./db-otherca
database        = $dir/index.txt
new_certs_dir   = $dir/newcerts
serial          = $dir/serial
default_md      = sha256
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no
preserve        = yes

[ policy_any ]
organizationName = optional
commonName       = supplied

[ v3_ca ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_srv ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_wrong_name ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:wrong.example
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ v3_wrong_eku ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF

for db in db-testca db-otherca; do
    mkdir -p "$db/newcerts"
    : >"$db/index.txt"
done

# genkey NAME: ECDSA P-256 key, PKCS#8 PEM, created with mode 0600.
genkey() {
    (umask 077 && openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -pkeyopt ec_param_enc:named_curve -out "$1.key")
}

# mkca NAME CN: self-signed CA valid for VALID_DAYS from now.
mkca() {
    local name=$1 cn=$2
    genkey "$name"
    openssl req -new -x509 -config openssl.cnf -key "$name.key" -sha256 \
        -subj "/O=ntimed test/CN=$cn" -days "$VALID_DAYS" -extensions v3_ca \
        -set_serial "0x$(openssl rand -hex 16)" -out "$name.pem"
}

# issue NAME ISSUER_SECTION ISSUER_FILE CN EXTENSIONS [START END]
# CA-signed leaf via `openssl ca`. Without START/END it is valid for VALID_DAYS from now.
issue() {
    local name=$1 section=$2 issuer=$3 cn=$4 ext=$5
    local -a validity
    if [[ $# -ge 7 ]]; then
        validity=(-startdate "$6" -enddate "$7")
    else
        validity=(-days "$VALID_DAYS")
    fi
    genkey "$name"
    openssl req -new -config openssl.cnf -key "$name.key" -sha256 \
        -subj "/O=ntimed test/CN=$cn" -out "$name.csr"
    openssl ca -batch -notext -config openssl.cnf -name "$section" \
        -cert "$issuer.pem" -keyfile "$issuer.key" -rand_serial -preserveDN \
        -extfile openssl.cnf -extensions "$ext" "${validity[@]}" \
        -in "$name.csr" -out "$name.pem" 2>ca.log || { cat ca.log >&2; return 1; }
}

mkca ca "ntimed test CA"
mkca other-ca "ntimed other test CA"

issue srv           testca  ca       localhost     v3_srv
issue expired       testca  ca       localhost     v3_srv  "$EXPIRED_START" "$EXPIRED_END"
issue not-yet-valid testca  ca       localhost     v3_srv  "$FUTURE_START" "$FUTURE_END"
issue wrong-name    testca  ca       wrong.example v3_wrong_name
issue wrong-eku     testca  ca       localhost     v3_wrong_eku
issue untrusted     otherca other-ca localhost     v3_srv

cat srv.pem ca.pem >srv-chain.pem

# --- Self-check: each certificate must pass or fail `openssl verify` exactly as intended ---
# expect ok|fail EXPECTED_MESSAGE CERT [extra verify options...]
expect() {
    local want=$1 msg=$2 cert=$3 out rc=0
    shift 3
    out=$(openssl verify -CAfile ca.pem "$@" "$cert" 2>&1) || rc=$?
    if [[ $want == ok && $rc -eq 0 ]] || [[ $want == fail && $rc -ne 0 && $out == *"$msg"* ]]; then
        return 0
    fi
    echo "make-certs.sh: self-check failed for $cert $* (wanted $want${msg:+: $msg}):" >&2
    echo "$out" >&2
    exit 1
}
expect ok   ""                                   srv.pem
expect ok   ""                                   srv.pem -purpose sslserver -verify_hostname localhost
expect ok   ""                                   srv.pem -purpose sslserver -verify_ip 127.0.0.1
expect ok   ""                                   srv.pem -purpose sslserver -verify_ip ::1
expect fail "certificate has expired"            expired.pem
expect fail "certificate is not yet valid"       not-yet-valid.pem
expect ok   ""                                   wrong-name.pem
expect fail "hostname mismatch"                  wrong-name.pem -verify_hostname localhost
expect fail "IP address mismatch"                wrong-name.pem -verify_ip 127.0.0.1
expect ok   ""                                   wrong-eku.pem
expect fail "unsuitable certificate purpose"      wrong-eku.pem -purpose sslserver
expect fail "unable to get local issuer"         untrusted.pem
out=$(openssl verify -CAfile other-ca.pem -purpose sslserver untrusted.pem 2>&1) \
    || { echo "make-certs.sh: untrusted.pem does not verify against other-ca.pem:" >&2; echo "$out" >&2; exit 1; }

# --- Install: keys 0600, certificates 0644 ---
for name in ca srv expired not-yet-valid wrong-name wrong-eku other-ca untrusted; do
    install -m 0600 "$name.key" "$OUT_DIR/$name.key"
    install -m 0644 "$name.pem" "$OUT_DIR/$name.pem"
done
install -m 0644 srv-chain.pem "$OUT_DIR/srv-chain.pem"

echo "make-certs.sh: wrote test certificates to $OUT_DIR"
