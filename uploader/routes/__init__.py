"""The API's routes, one APIRouter per resource."""

from uploader.routes import farm, ops, uploads, videos

ROUTERS = (ops.router, uploads.router, videos.router, farm.router)
