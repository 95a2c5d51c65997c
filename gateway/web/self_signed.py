"""A self-signed certificate for trying HTTPS on a LAN (``scripts/run --tls-self-signed``).

    python -m gateway.web.self_signed DIR [NAME ...]

writes DIR/cert.pem and DIR/key.pem for localhost, 127.0.0.1, this host's name and its
addresses, and NAME... (host names or IP addresses; a comma-separated list counts as
several; unspecified addresses such as 0.0.0.0 are left out). An existing pair is kept
if its certificate covers them all. Browsers warn about it once; for production use a
certificate from a real CA (Let's Encrypt).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def default_names() -> list[str]:
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    try:
        names += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    return list(dict.fromkeys(names))


def make_self_signed(directory: Path, names: list[str], days: int = 825
                     ) -> tuple[Path, Path]:
    """Write a new key and a certificate for ``names`` into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    directory = Path(argv[0])
    names = list(dict.fromkeys(default_names() + [
        _canonical(n) for arg in argv[1:] for n in arg.split(",")
        if n and not _unspecified(n)]))
    cert_path = directory / "cert.pem"
    if cert_path.exists() and (directory / "key.pem").exists():
        covered = _covered(cert_path)
        missing = [n for n in names if n not in covered]
        if not missing:
            print(f"keeping {directory}/cert.pem and key.pem")
            return 0
        print(f"{cert_path} does not cover {', '.join(missing)}: a new one")
    cert, key = make_self_signed(directory, names)
    print(f"wrote {cert} and {key} for {', '.join(names)}")
    return 0


def _canonical(name: str) -> str:
    """An address as a certificate lists it (``2001:DB8::1`` -> ``2001:db8::1``)."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _unspecified(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return False


def _covered(cert_path: Path) -> set[str]:
    """The names and addresses a certificate is for (as written in it)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in alt.get_values_for_type(x509.IPAddress)} | set(
        alt.get_values_for_type(x509.DNSName))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
