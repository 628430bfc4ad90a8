"""A throw-away CA and a server certificate for 127.0.0.1, and the embedded server serving S3 over TLS with them."""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.storage.embedded import EmbeddedS3, free_ports


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, cert.pem, key.pem (server cert for 127.0.0.1/localhost signed by the CA)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder(subject_name=_name("scv test CA"), issuer_name=_name("scv test CA"),
                                  public_key=ca_key.public_key(), serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    cert = (x509.CertificateBuilder(subject_name=_name("127.0.0.1"), issuer_name=ca.subject,
                                    public_key=key.public_key(), serial_number=x509.random_serial_number(), **valid)
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TlsS3(EmbeddedS3):
    """The embedded server speaking S3 over HTTPS only, with `tls` = (certificate, key), on `port`; its plain S3
    port stays internal."""

    def __init__(self, *, tls: tuple[Path, Path], **kwargs):
        super().__init__(**kwargs)
        self.tls = tls

    def command(self, store_dir: Path, ports: dict[str, int]) -> list[str]:
        # One more free port than `ports` holds, so at least one of them is none of theirs.
        self.port = next(port for port in free_ports(len(ports) + 1) if port not in ports.values())
        return [*super().command(store_dir, ports), f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}",
                f"-s3.port.https={self.port}"]
