"""The API's routes, one APIRouter per resource."""

from uploader.routes import console, farm, ops, tus, uploads, videos, webhooks

ROUTERS = (ops.router, uploads.router, tus.router, videos.router, farm.router, webhooks.router, console.router)
