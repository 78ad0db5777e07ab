"""AuthService: translates messages; the rules live in service.py."""

from __future__ import annotations

import grpc

from repwise.v1 import auth_pb2, auth_pb2_grpc
from server.auth import converters as conv
from server.auth.service import AuthService


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, auth: AuthService) -> None:
        self.auth = auth

    def Register(
        self, request: auth_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RegisterResponse:
        user, tokens = self.auth.register(request.email, request.password, request.display_name)
        return auth_pb2.RegisterResponse(user=conv.user_to_pb(user), **conv.token_fields(tokens))

    def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.LoginResponse:
        user, tokens = self.auth.login(request.email, request.password)
        return auth_pb2.LoginResponse(user=conv.user_to_pb(user), **conv.token_fields(tokens))

    def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RefreshResponse:
        return auth_pb2.RefreshResponse(
            **conv.token_fields(self.auth.refresh(request.refresh_token))
        )

    def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.ServicerContext
    ) -> auth_pb2.LogoutResponse:
        return auth_pb2.LogoutResponse(sessions_ended=self.auth.logout(request.all_sessions))

    def GetMe(
        self, request: auth_pb2.GetMeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetMeResponse:
        return auth_pb2.GetMeResponse(user=conv.user_to_pb(self.auth.get_me()))

    def UpdateMe(
        self, request: auth_pb2.UpdateMeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.UpdateMeResponse:
        changes = conv.profile_changes(request.user, list(request.update_mask.paths))
        user = self.auth.update_me(changes, request.user.etag)
        return auth_pb2.UpdateMeResponse(user=conv.user_to_pb(user))

    def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ChangePasswordResponse:
        tokens = self.auth.change_password(request.current_password, request.new_password)
        return auth_pb2.ChangePasswordResponse(**conv.token_fields(tokens))

    def DeleteAccount(
        self, request: auth_pb2.DeleteAccountRequest, context: grpc.ServicerContext
    ) -> auth_pb2.DeleteAccountResponse:
        self.auth.delete_account(request.password)
        return auth_pb2.DeleteAccountResponse()

    def SetUserRole(
        self, request: auth_pb2.SetUserRoleRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SetUserRoleResponse:
        user = self.auth.set_role(request.email, conv.role_from_pb(request.role))
        return auth_pb2.SetUserRoleResponse(user=conv.user_to_pb(user))
